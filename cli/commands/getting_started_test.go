package commands_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/cli/commands"
	"github.com/clustermesh/clustermesh/cli/internal/clitest"
	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// docCommands returns the commands of the ```sh blocks of a Markdown file,
// in order.
func docCommands(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	in := false
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "```sh":
			in = true
		case line == "```":
			in = false
		case in && line != "" && !strings.HasPrefix(line, "#"):
			cmds = append(cmds, line)
		}
	}
	return cmds
}

var replicasRE = regexp.MustCompile(`--context (\S+) .*create deployment .*--replicas=(\d+)`)

// TestGettingStarted runs every command of docs/getting-started.md, in
// order, against two real kube-apiservers. The test plays the parts of a
// cluster that a kube-apiserver alone lacks: the kubelet running the
// clustermesh-apiserver and agent as soon as enable installed them (while
// enable waits for its store), and the scheduler, kubelet and EndpointSlice
// controller turning the demo Deployment into ready backends.
func TestGettingStarted(t *testing.T) {
	cmds := docCommands(t, "../../docs/getting-started.md")
	if len(cmds) < 15 {
		t.Fatalf("found %d commands in docs/getting-started.md; the parser or the doc is broken", len(cmds))
	}
	env := clitest.Start(t,
		clitest.Spec{Name: "c1", NodeIP: "127.0.0.21", PodCIDR: "10.1.0.0/24"},
		clitest.Spec{Name: "c2", NodeIP: "127.0.0.22", PodCIDR: "10.2.0.0/24"},
	)
	t.Setenv("KUBECONFIG", env.Kubeconfig)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	env.Kubelet(t, "c1", "c2")

	replicas := map[string]int{}
	seen := map[string]bool{}
	for _, line := range cmds {
		t.Logf("$ %s", line)
		args := strings.Fields(line)
		if strings.HasPrefix(line, "source <(") {
			args = strings.Fields(strings.TrimSuffix(strings.TrimPrefix(line, "source <("), ")"))
		}
		var out bytes.Buffer
		switch args[0] {
		case "clustermesh":
			var stderr bytes.Buffer
			err := commands.Execute(ctx, args[1:], &out, &stderr)
			t.Logf("%s%s", out.String(), stderr.String())
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
		case "kubectl":
			kubetest.RequireKubectl(t)
			bin, err := kubetest.Binary(kubetest.Kubectl)
			if err != nil {
				t.Fatal(err)
			}
			b, err := exec.CommandContext(ctx, bin, args[1:]...).CombinedOutput()
			t.Logf("%s", b)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
		default:
			t.Fatalf("command %q: the test does not know how to run %s", line, args[0])
		}
		checkOutput(t, args, out.Bytes())
		if args[0] == "clustermesh" && args[1] == "enable" {
			if again := bytes.Contains(out.Bytes(), []byte("nothing changed")); again != seen[line] {
				t.Errorf("%s: output %q; a repeated enable must report nothing changed, a first one its changes", line, out.String())
			}
		}
		seen[line] = true

		// The parts of a cluster kube-apiserver alone does not play.
		switch {
		case replicasRE.MatchString(line):
			m := replicasRE.FindStringSubmatch(line)
			replicas[m[1]], _ = strconv.Atoi(m[2])
		case args[0] == "kubectl" && strings.Contains(line, "expose deployment echo"):
			c := env.Clusters[args[2]]
			clitest.CreateBackends(t, c.Kube, "demo", "echo", strings.TrimSuffix(c.PodCIDR, "0/24"), 8080, replicas[args[2]])
		}
	}
}

// checkOutput asserts what the doc promises about some commands' output.
func checkOutput(t *testing.T, args []string, out []byte) {
	t.Helper()
	cmd := strings.Join(args, " ")
	switch {
	case strings.HasPrefix(cmd, "clustermesh completion bash"):
		if !bytes.Contains(out, []byte("__start_clustermesh")) {
			t.Errorf("completion script lacks its entry point")
		}
	case strings.HasPrefix(cmd, "clustermesh enable"):
		// enable returns once its store serves, so connect may follow.
		if !regexp.MustCompile(`✓ store of c\d serves at https://`).Match(out) {
			t.Errorf("enable output lacks the store it waited for:\n%s", out)
		}
	case strings.HasPrefix(cmd, "clustermesh connect"):
		if !bytes.Contains(out, []byte("✓ checks passed")) || !bytes.Contains(out, []byte("✓ connected c1 with c2")) {
			t.Errorf("connect output:\n%s", out)
		}
	case strings.HasPrefix(cmd, "clustermesh service list"):
		// Both clusters export their backends: 2 + 3 ready.
		if !regexp.MustCompile(`demo/echo\s+5\s+c1: 2/2, c2: 3/3`).Match(out) {
			t.Errorf("service list does not show both clusters' backends:\n%s", out)
		}
	case strings.HasPrefix(cmd, "clustermesh status") && strings.Contains(cmd, "-o json"):
		var st mesh.Status
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("status -o json: %v", err)
		}
		if !st.Ready || len(st.Clusters) != 2 {
			t.Errorf("status -o json: ready=%v clusters=%+v; want ready with c1 and c2", st.Ready, st.Clusters)
		}
	case strings.HasPrefix(cmd, "clustermesh kv get"):
		if !bytes.Contains(out, []byte("[Service]")) {
			t.Errorf("kv get did not decode a Service:\n%s", out)
		}
	case strings.HasPrefix(cmd, "clustermesh kv list") && strings.Contains(cmd, "--cluster c2"):
		if !bytes.Contains(out, []byte("clustermesh/v1/services/c2/demo/echo")) {
			t.Errorf("kv list of c2 lacks c2's service:\n%s", out)
		}
	}
}

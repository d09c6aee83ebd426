package commands

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/version"
)

// Bad input is refused before any cluster is contacted, with a message
// naming the offending flag or value.
func TestRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"service", "global", "demo/echo", "--affinity", "closest"}, `"closest"`},
		{[]string{"service", "global", "demo/echo", "--min-local-backends", "0"}, "--min-local-backends"},
		{[]string{"service", "global", "demo/echo", "--remove", "--shared=false"}, "--remove"},
		{[]string{"service", "global", "a/b/c"}, `"a/b/c"`},
		{[]string{"enable", "--cluster-name", "c1", "--cluster-id", "0"}, "cluster ID 0"},
		{[]string{"enable", "--cluster-name", "c1", "--cluster-id", "300"}, "cluster ID 300"},
		{[]string{"enable", "--cluster-name", "c1", "--cluster-id", "1", "--ca-cert", "x"}, "--ca-key"},
		{[]string{"connect"}, "--destination-context"},
		{[]string{"connect", "--destination-context", "a", "--destination-context", "b", "--destination-endpoint", "https://h:1"}, "CONTEXT="},
		{[]string{"connect", "--destination-context", "a", "--destination-endpoint", "z=https://h:1"}, `"z"`},
		{[]string{"status", "-o", "xml"}, `"xml"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := Execute(context.Background(), append(tc.args, "--kubeconfig", "/nonexistent"), &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want one mentioning %s", err, tc.mention)
			}
			if strings.Contains(err.Error(), "/nonexistent") {
				t.Fatalf("err = %v: the cluster was contacted before the input was checked", err)
			}
		})
	}
}

func TestEndpointOverrides(t *testing.T) {
	got, err := endpointOverrides([]string{"c2"}, []string{"https://10.0.0.1:2379"})
	if err != nil || got["c2"] != "https://10.0.0.1:2379" {
		t.Fatalf("single destination: %v, %v", got, err)
	}
	got, err = endpointOverrides([]string{"c2", "c3"}, []string{"c3=https://10.0.0.3:2379"})
	if err != nil || len(got) != 1 || got["c3"] != "https://10.0.0.3:2379" {
		t.Fatalf("keyed: %v, %v", got, err)
	}
	if _, err := endpointOverrides([]string{"c2"}, []string{"c4=https://x:1"}); !errors.Is(err, mesh.ErrInvalidArgument) {
		t.Fatalf("unknown context: %v", err)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		if err := Execute(context.Background(), []string{"completion", shell}, &out, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "clustermesh") {
			t.Errorf("%s completion does not mention the command", shell)
		}
	}
	// Dynamic completion of --output values.
	var out bytes.Buffer
	if err := Execute(context.Background(), []string{"__complete", "status", "-o", ""}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"text", "json", "yaml"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("completion of -o lacks %s: %q", v, out.String())
		}
	}
}

// enable --dry-run renders the manifests without contacting a cluster.
func TestEnableDryRun(t *testing.T) {
	var out bytes.Buffer
	args := []string{"enable", "--dry-run", "--cluster-name", "c7", "--cluster-id", "7", "--endpoint", "https://10.0.0.7:2379", "--kubeconfig", "/nonexistent"}
	if err := Execute(context.Background(), args, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: DaemonSet", "kind: StatefulSet", "--cluster-name=c7", "cluster-id: \"7\"", "endpoint: https://10.0.0.7:2379"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dry-run output lacks %q", want)
		}
	}
}

// enable installs this build's images unless told otherwise.
func TestEnableImages(t *testing.T) {
	base := []string{"enable", "--dry-run", "--cluster-name", "c7", "--cluster-id", "7", "--kubeconfig", "/nonexistent"}
	for _, tc := range []struct {
		name      string
		flags     []string
		apiserver string
		agent     string
	}{
		{"default", nil, deploy.APIServerImage(), deploy.AgentImage()},
		{"agent overridden", []string{"--agent-image", "example.com/agent:v9"}, deploy.APIServerImage(), "example.com/agent:v9"},
		{"both overridden", []string{"--apiserver-image", "example.com/apiserver:v9", "--agent-image", "example.com/agent:v9"}, "example.com/apiserver:v9", "example.com/agent:v9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := Execute(context.Background(), append(slices.Clone(base), tc.flags...), &out, &out); err != nil {
				t.Fatal(err)
			}
			images := map[string]bool{}
			for _, line := range strings.Split(out.String(), "\n") {
				if img, ok := strings.CutPrefix(strings.TrimSpace(line), "image: "); ok {
					images[img] = true
				}
			}
			want := map[string]bool{tc.apiserver: true, tc.agent: true}
			if !maps.Equal(images, want) {
				t.Errorf("images %v, want %v", images, want)
			}
		})
	}
	if !strings.HasSuffix(deploy.AgentImage(), ":"+version.Version) || strings.HasSuffix(deploy.AgentImage(), ":latest") {
		t.Errorf("default agent image %s is not tagged with this build's version %s", deploy.AgentImage(), version.Version)
	}
}

func TestCompleteContexts(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["k"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{}
	for _, n := range []string{"east", "west"} {
		cfg.Contexts[n] = &clientcmdapi.Context{Cluster: "k", AuthInfo: "u"}
	}
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"__complete", "--kubeconfig", kc, "status", "--context", ""},
		{"__complete", "--kubeconfig", kc, "connect", "--destination-context", ""},
	} {
		var out bytes.Buffer
		if err := Execute(context.Background(), args, &out, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "east\nwest\n") {
			t.Errorf("%v: completions %q, want east and west", args, out.String())
		}
	}
}

func TestPrintStatus(t *testing.T) {
	st := &mesh.Status{
		Context: "c1", Cluster: "c1", ID: 1, Endpoint: "https://10.0.0.1:2379",
		APIServer:       mesh.APIServerStatus{Workload: "1/1", StoreReachable: true, Synced: true},
		AgentsReporting: 2, AgentsExpected: 3,
		Clusters: []mesh.ClusterStatus{
			{Name: "c1", ID: 1, Local: true, Agents: 2, Connected: 2, Synced: 2},
			{Name: "c2", ID: 2, Agents: 2, Connected: 1, Synced: 1},
		},
		Problems: []mesh.Problem{{Reason: "1 of 2 agents are not connected to cluster c2", Fix: "check the endpoint"}},
	}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, want := range []string{
		"Cluster c1 (ID 1), context c1: NOT READY",
		"Agents: 2 reporting of 3 scheduled",
		"c1 (local)",
		"1/2",
		"✗ 1 of 2 agents are not connected to cluster c2",
		"→ check the endpoint",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	var y bytes.Buffer
	o := output{format: "yaml"}
	if err := o.print(&y, st, nil); err != nil || !strings.Contains(y.String(), "reason: 1 of 2 agents") {
		t.Errorf("yaml output: %v\n%s", err, y.String())
	}
}

package bpf

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// startLoader runs the loader role (an agent stand-in) and waits until it has
// opened the datapath and programmed svcs.
func startLoader(t *testing.T, pin, cg string, svcs []loadbalancer.Service) *exec.Cmd {
	t.Helper()
	js, err := json.Marshal(svcs)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), roleEnv+"=loader", "CM_PINDIR="+pin, "CM_CGROUP="+cg, "CM_SERVICES="+string(js))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if _, err := cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start loader: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	var lines []string
	for sc.Scan() {
		if sc.Text() == "ready" {
			go func() {
				for sc.Scan() {
				}
			}()
			return cmd
		}
		lines = append(lines, sc.Text())
	}
	t.Fatalf("loader exited before ready: %s", strings.Join(lines, "\n"))
	return nil
}

// TestLoaderRestart keeps TCP and UDP clients connecting through the VIP
// while the process owning the datapath is killed (SIGKILL) and started
// again several times: pinned maps and links carry the balancing across, and
// the new process adopts them and swaps its programs in without a gap.
func TestLoaderRestart(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 3)
	tp.serveEcho(t)
	t.Cleanup(func() {
		// Adopt what the last loader left and remove it: detach and unpin.
		dp, err := Open(context.Background(), testConfig(cg, pin))
		if err != nil {
			t.Errorf("open for removal: %v", err)
			return
		}
		if err := dp.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
	})

	vip := netip.MustParseAddrPort("10.96.0.20:80")
	// Every other loader programs the preferred set in the other order: the
	// adopted services then really change (new slot set, switch, old set
	// retired and freed) while the clients run; the others re-upsert what
	// is there, which writes nothing.
	services := func(restart int) []loadbalancer.Service {
		var svcs []loadbalancer.Service
		preferred := append(backendsOf(tp.v4, nodeA, "be1"), backendsOf(tp.v4, nodeB, "be2")...)
		if restart%2 == 1 {
			preferred[0], preferred[1] = preferred[1], preferred[0]
		}
		for _, proto := range []loadbalancer.Protocol{loadbalancer.TCP, loadbalancer.UDP} {
			svcs = append(svcs, loadbalancer.Service{
				Name:      "default/echo",
				Frontend:  loadbalancer.Frontend{Addr: vip, Protocol: proto},
				Preferred: preferred,
				Fallback:  backendsOf(tp.v4, nodeC, "be3"),
			})
		}
		return svcs
	}
	loader := startLoader(t, pin, cg, services(0))

	type client struct {
		name  string
		cmd   *exec.Cmd
		out   *bytes.Buffer
		stdin io.WriteCloser
	}
	var clients []client
	for _, mode := range []string{"tcp", "udp"} {
		cmd, out, stdin := startClient(t, tp.clientNS, cg, clientSpec{Mode: mode, VIP: vip})
		clients = append(clients, client{mode, cmd, out, stdin})
	}
	const restarts = 4
	for i := 0; i < restarts; i++ {
		time.Sleep(300 * time.Millisecond)
		if err := loader.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		loader.Wait()
		// No loader at all for a while: the kernel balances on its own.
		time.Sleep(300 * time.Millisecond)
		loader = startLoader(t, pin, cg, services(i/2+1))
	}
	time.Sleep(300 * time.Millisecond)

	for _, c := range clients {
		c.stdin.Close()
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("%s client: %v\n%s", c.name, err, c.out)
		}
		res := parseClient(t, c.out)
		total := 0
		for _, n := range res.Backends {
			total += n
		}
		t.Logf("%s client: %d exchanges over %d loader restarts, per backend %v, %d errors", c.name, total, restarts, res.Backends, res.NumErrors)
		if res.NumErrors != 0 {
			t.Errorf("%s client: %d of %d attempts failed across restarts, first: %v", c.name, res.NumErrors, total+res.NumErrors, res.Errors)
		}
		if got := keysOf(res.Backends); !slices.Equal(got, []string{"be1", "be2"}) {
			t.Errorf("%s client: reached %v, want the preferred be1 and be2 only", c.name, res.Backends)
		}
		if total < 100 || res.PeerNotVIP != 0 {
			t.Errorf("%s client: %d exchanges, %d not from the VIP", c.name, total, res.PeerNotVIP)
		}
	}
}

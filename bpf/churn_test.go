package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestChurnUnderTraffic rewrites a service's backend set thousands of times
// (grow, shrink, replace, backends freed and reallocated) while clients
// connect to it in a loop: no connect may fail and none may reach a backend
// outside the sets programmed. The small slot map makes most updates wait
// for room (forced reclaim); the last ones are freed by the background loop.
// Every update also writes the service's entry anew in another cm_services
// entry of its probe window, which fills with dead entries within 128
// updates (the test's table has 256): many updates wait for freed entries
// too.
// Before slot sets were freed after a grace period, about 1 in 4,000
// attempts here failed with EPERM (a reader racing the deletion).
func TestChurnUnderTraffic(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 4)
	tp.serveEcho(t)
	dp := openTest(t, testConfig(cg, pin))
	ctx := context.Background()

	vip := netip.MustParseAddrPort("10.96.0.30:80")
	sets := [][]string{{"be1", "be2"}, {"be2", "be3", "be4"}, {"be4"}, {"be1", "be3"}}
	upsert := func(i int) {
		for _, proto := range []loadbalancer.Protocol{loadbalancer.TCP, loadbalancer.UDP} {
			if err := dp.UpsertService(ctx, loadbalancer.Service{
				Frontend:  loadbalancer.Frontend{Addr: vip, Protocol: proto},
				Preferred: backendsOf(tp.v4, nodeA, sets[i%len(sets)]...),
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	upsert(0)
	type client struct {
		mode string
		wait func() clientResult
	}
	var clients []client
	for _, mode := range []string{"tcp", "udp"} {
		cmd, out, stdin := startClient(t, tp.clientNS, cg, clientSpec{Mode: mode, VIP: vip})
		clients = append(clients, client{mode, func() clientResult {
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("%s client: %v\n%s", mode, err, out)
			}
			return parseClient(t, out)
		}})
	}
	const updates = 20000
	for i := 1; i <= updates; i++ {
		upsert(i)
	}
	for _, c := range clients {
		res := c.wait()
		total := 0
		for _, n := range res.Backends {
			total += n
		}
		t.Logf("%s client: %d exchanges during %d updates, %v, %d errors", c.mode, total, updates, res.Backends, res.NumErrors)
		if res.NumErrors != 0 {
			t.Errorf("%s client: %d of %d attempts failed, first: %v", c.mode, res.NumErrors, total+res.NumErrors, res.Errors)
		}
		if got := keysOf(res.Backends); !slices.Equal(got, []string{"be1", "be2", "be3", "be4"}) {
			t.Errorf("%s client: reached %v", c.mode, res.Backends)
		}
	}
	// The background loop frees the replaced sets on its own.
	poll.Eventually(t, 30*time.Second, "replaced slot sets to be freed", func() (bool, string) {
		dp.mu.Lock()
		n := len(dp.retired)
		dp.mu.Unlock()
		return n == 0, fmt.Sprintf("%d not freed", n)
	})
	checkMaps(t, dp)
}

package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

func TestTCPVIPSlots(t *testing.T) {
	for _, c := range []struct{ in, want uint32 }{{0, 1}, {1, 1}, {2, 2}, {3, 4}, {4, 4}, {262144, 262144}, {262145, 524288}} {
		if got := tcpVIPSlots(int(c.in)); got != c.want {
			t.Errorf("tcpVIPSlots(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}

// TestTCPVIPRing checks the cm_tcp_vip ring's promises on real sockets, v4
// and v6, with a ring of four entries so that it wraps: getpeername() of a
// socket connected through a service is the VIP; of a socket that dialled
// a backend directly, the backend; once later sockets have overwritten a
// socket's entry, its backend, never another socket's VIP.
func TestTCPVIPRing(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 2)
	tp.serveEcho(t)
	cfg := testConfig(cg, pin)
	cfg.TCPVIPSlots = 3 // rounded up to 4
	dp := openTest(t, cfg)
	if got := dp.coll.Maps[mapTCPVIP].MaxEntries(); got != 4 {
		t.Fatalf("ring of %d entries, want 4", got)
	}

	for _, fam := range []struct {
		name       string
		addrs      map[string]netip.AddrPort
		vip1, vip2 netip.AddrPort
	}{
		{"v4", tp.v4, netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("10.96.0.11:80")},
		{"v6", tp.v6, netip.MustParseAddrPort("[fd00:96::10]:80"), netip.MustParseAddrPort("[fd00:96::11]:80")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			be1 := fam.addrs["be1"]
			for _, s := range []struct {
				vip netip.AddrPort
				be  string
			}{{fam.vip1, "be1"}, {fam.vip2, "be2"}} {
				if err := dp.UpsertService(context.Background(), loadbalancer.Service{
					Frontend:  loadbalancer.Frontend{Addr: s.vip, Protocol: loadbalancer.TCP},
					Preferred: backendsOf(fam.addrs, nodeA, s.be),
				}); err != nil {
					t.Fatal(err)
				}
			}
			var fds []int
			t.Cleanup(func() {
				for _, fd := range fds {
					unix.Close(fd)
				}
			})
			dial := func(to netip.AddrPort) int {
				t.Helper()
				fd, err := dialInCgroup(tp.clientNS, cg, to)
				if err != nil {
					t.Fatalf("connect %s: %v", to, err)
				}
				fds = append(fds, fd)
				return fd
			}
			peer := func(fd int) netip.AddrPort {
				t.Helper()
				p, err := peerOf(fd)
				if err != nil {
					t.Fatal(err)
				}
				return netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
			}

			first := dial(fam.vip1)
			if got := peer(first); got != fam.vip1 {
				t.Fatalf("through the service: getpeername %s, want the VIP %s", got, fam.vip1)
			}
			direct := dial(be1)
			if got := peer(direct); got != be1 {
				t.Fatalf("dialled directly: getpeername %s, want the backend %s", got, be1)
			}
			var last int
			for range 16 { // four times round the ring
				last = dial(fam.vip2)
			}
			if got := peer(last); got != fam.vip2 {
				t.Fatalf("newest socket: getpeername %s, want the VIP %s", got, fam.vip2)
			}
			switch got := peer(first); got {
			case be1:
				t.Logf("first socket's entry overwritten: getpeername shows its backend %s", be1)
			case fam.vip1:
				t.Logf("first socket's entry not overwritten yet (cookies of other CPUs' batches)")
			default:
				t.Fatalf("first socket after the ring wrapped: getpeername %s, want %s or %s (never another socket's VIP %s)", got, fam.vip1, be1, fam.vip2)
			}
			if got := peer(direct); got != be1 {
				t.Fatalf("dialled directly, after the ring wrapped: getpeername %s, want %s", got, be1)
			}
		})
	}
}

// dialInCgroup connects a TCP socket from netns ns as a member of cgroup
// cg (so the programs see it) and returns its descriptor.
func dialInCgroup(ns, cg string, to netip.AddrPort) (int, error) {
	orig, err := ownCgroup()
	if err != nil {
		return -1, err
	}
	if err := joinCgroup(cg); err != nil {
		return -1, err
	}
	defer joinCgroup(orig)
	fd := -1
	err = netlab.InNetns(ns, func() error {
		var sa unix.Sockaddr
		family := unix.AF_INET
		if to.Addr().Is4() {
			sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
		} else {
			family = unix.AF_INET6
			sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
		}
		s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(s, sa); err != nil {
			unix.Close(s)
			return fmt.Errorf("connect: %w", err)
		}
		fd = s
		return nil
	})
	return fd, err
}

// TestTCPVIPAcrossOpen checks that an Open adopting pinned maps keeps the
// ring's entries (a restarted agent does not make established sockets
// forget their VIP) and removes the pin of the socket storage map earlier
// builds used.
func TestTCPVIPAcrossOpen(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 1)
	tp.serveEcho(t)
	cfg := testConfig(cg, pin)
	dp := openTest(t, cfg)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	if err := dp.UpsertService(context.Background(), loadbalancer.Service{
		Frontend:  loadbalancer.Frontend{Addr: vip, Protocol: loadbalancer.TCP},
		Preferred: backendsOf(tp.v4, nodeA, "be1"),
	}); err != nil {
		t.Fatal(err)
	}
	fd, err := dialInCgroup(tp.clientNS, cg, vip)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	// Any map will do as the stale pin: socket storage needs BTF.
	stale, err := ebpf.NewMap(&ebpf.MapSpec{Name: mapSkVIPStale, Type: ebpf.Array, KeySize: 4, ValueSize: 40, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	if err := stale.Pin(filepath.Join(pin, mapSkVIPStale)); err != nil {
		t.Fatal(err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	openTest(t, cfg)
	if got, err := peerOf(fd); err != nil || got != vip {
		t.Fatalf("after a new Open: getpeername %s (%v), want the VIP %s", got, err, vip)
	}
	if _, err := os.Stat(filepath.Join(pin, mapSkVIPStale)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin of %s after Open: %v, want it removed", mapSkVIPStale, err)
	}
}

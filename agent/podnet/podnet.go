// Package podnet finds the node's pods by their addresses, for the policy
// datapath: a pod's network namespace (its cookie is how the socket hooks
// tell whose egress policy applies) and the host side of its interface (where
// the ingress check is attached).
//
// The agent learns a pod's address and identity from its cluster's store,
// not from a container runtime, so it finds the namespace by looking: every
// namespace bind-mounted in a directory (CNI plugins and `ip netns` put them
// in /var/run/netns) is entered once to read its addresses and cookie.
// Nothing here depends on a runtime's API, which keeps the agent beside any
// CNI.
package podnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netns is one network namespace found by Scan.
type Netns struct {
	// Path is the bind mount the namespace was found through.
	Path string
	// Cookie is the kernel's identifier of the namespace, what
	// bpf_get_netns_cookie returns for its sockets.
	Cookie uint64
	// Addrs are the namespace's global unicast addresses.
	Addrs []netip.Addr
}

// Scanner reads the network namespaces bind-mounted in a directory, and
// rereads only what may have changed: a namespace it has not seen (by path
// and inode), and, when asked, the ones without a wanted address yet (a CNI
// plugin adds the pod's address after creating its namespace). Not safe for
// concurrent use.
type Scanner struct {
	dir   string
	cache map[string]cached
}

type cached struct {
	ino uint64
	ns  Netns
}

// NewScanner returns a scanner of dir.
func NewScanner(dir string) *Scanner { return &Scanner{dir: dir, cache: map[string]cached{}} }

// Scan returns every namespace of the directory. want, if not nil, says
// whether an address is one the caller looks for: namespaces holding none
// are read again. Entries that are not namespaces (or vanish meanwhile) are
// skipped; a missing directory is no error, only no namespaces.
func (s *Scanner) Scan(want func(netip.Addr) bool) ([]Netns, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		clear(s.cache)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("podnet: scan %s: %w", s.dir, err)
	}
	seen := make(map[string]bool, len(entries))
	var out []Netns
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		path := filepath.Join(s.dir, e.Name())
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			continue
		}
		seen[path] = true
		c, ok := s.cache[path]
		if ok && c.ino == st.Ino && (want == nil || slices.ContainsFunc(c.ns.Addrs, want)) {
			out = append(out, c.ns)
			continue
		}
		ns, err := Read(path)
		if err != nil {
			delete(s.cache, path)
			continue
		}
		s.cache[path] = cached{ino: st.Ino, ns: ns}
		out = append(out, ns)
	}
	for p := range s.cache {
		if !seen[p] {
			delete(s.cache, p)
		}
	}
	return out, nil
}

// Read returns the cookie and addresses of the network namespace at path.
func Read(path string) (Netns, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return Netns{}, fmt.Errorf("podnet: open %s: %w", path, err)
	}
	defer h.Close()
	out := Netns{Path: path}
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return out, fmt.Errorf("podnet: netlink in %s: %w", path, err)
	}
	addrs, err := nh.AddrList(nil, netlink.FAMILY_ALL)
	nh.Close()
	if err != nil {
		return out, fmt.Errorf("podnet: addresses in %s: %w", path, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && ip.Unmap().IsGlobalUnicast() {
			out.Addrs = append(out.Addrs, ip.Unmap())
		}
	}
	if out.Cookie, err = cookie(h); err != nil {
		return out, fmt.Errorf("podnet: cookie of %s: %w", path, err)
	}
	return out, nil
}

// cookie opens a socket inside the namespace and asks the kernel for the
// namespace's cookie. The setns happens on a thread of its own that is
// never handed back to the runtime, so a failed switch back cannot leak the
// pod's namespace into other goroutines.
func cookie(h netns.NsHandle) (uint64, error) {
	type result struct {
		c   uint64
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread exits with the goroutine.
		if err := netns.Set(h); err != nil {
			ch <- result{err: err}
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: err}
			return
		}
		c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		unix.Close(fd)
		ch <- result{c: c, err: err}
	}()
	r := <-ch
	return r.c, r.err
}

// HostInterface returns the index of the interface the node routes addr
// through: for a local pod, the host side of its link.
func HostInterface(addr netip.Addr) (int, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return 0, fmt.Errorf("podnet: route to %s: %w", addr, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return 0, fmt.Errorf("podnet: route to %s: no interface", addr)
	}
	return routes[0].LinkIndex, nil
}

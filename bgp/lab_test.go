package bgp

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// lab is a set of network namespaces on one fabric bridge, named with a
// per-run prefix and deleted in Cleanup even when the test fails.
type lab struct {
	tb     testing.TB
	prefix string
	fabric string
	dir    string
}

func newLab(tb testing.TB) *lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces (CI runs as root)")
	}
	for _, bin := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			tb.Skipf("needs %s: %v", bin, err)
		}
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	l := &lab{tb: tb, prefix: "cm" + hex.EncodeToString(b), dir: tb.TempDir()}
	l.fabric = l.prefix + "-fab"
	tb.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(line, " ")
			if strings.HasPrefix(name, l.prefix+"-") {
				_ = exec.Command("ip", "netns", "del", name).Run()
			}
		}
	})
	l.run("ip", "netns", "add", l.fabric)
	l.run("ip", "-n", l.fabric, "link", "add", "br0", "type", "bridge")
	l.run("ip", "-n", l.fabric, "link", "set", "br0", "up")
	return l
}

func (l *lab) run(args ...string) string {
	l.tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *lab) ns(short string) string { return l.prefix + "-" + short }

// host adds a namespace with eth0 on the fabric at ip/24.
func (l *lab) host(short, ip string) string {
	ns := l.ns(short)
	l.run("ip", "netns", "add", ns)
	l.run("ip", "-n", l.fabric, "link", "add", "v"+short, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.run("ip", "-n", l.fabric, "link", "set", "v"+short, "master", "br0", "up")
	l.run("ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
	l.run("ip", "-n", ns, "link", "set", "eth0", "up")
	l.run("ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

// pod adds a pod namespace behind a veth of node: the node side gets gw/24,
// the pod podIP/24 with a default route via gw; the node forwards.
func (l *lab) pod(node, short, gw, podIP string) string {
	ns := l.ns(short)
	nodeNS := l.ns(node)
	l.run("ip", "netns", "add", ns)
	l.run("ip", "-n", nodeNS, "link", "add", "p"+short, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.run("ip", "-n", nodeNS, "addr", "add", gw+"/24", "dev", "p"+short)
	l.run("ip", "-n", nodeNS, "link", "set", "p"+short, "up")
	l.run("ip", "-n", ns, "addr", "add", podIP+"/24", "dev", "eth0")
	l.run("ip", "-n", ns, "link", "set", "eth0", "up")
	l.run("ip", "-n", ns, "link", "set", "lo", "up")
	l.run("ip", "-n", ns, "route", "add", "default", "via", gw)
	l.run("nsenter", "--net=/run/netns/"+nodeNS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return ns
}

// handle opens a netlink handle in ns.
func (l *lab) handle(ns string) *netlink.Handle {
	l.tb.Helper()
	h, err := netns.GetFromPath("/run/netns/" + ns)
	if err != nil {
		l.tb.Fatalf("netns %s: %v", ns, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		l.tb.Fatalf("netlink in %s: %v", ns, err)
	}
	return nh
}

// routes lists the routes of protocol proto in ns's main table.
func (l *lab) routes(ns string, proto netlink.RouteProtocol) map[netip.Prefix]netip.Addr {
	l.tb.Helper()
	h := l.handle(ns)
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: proto}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		l.tb.Fatalf("list routes in %s: %v", ns, err)
	}
	out := map[netip.Prefix]netip.Addr{}
	for _, r := range rs {
		if p, ok := prefixFromIPNet(r.Dst); ok && r.Dst != nil {
			gw, _ := netip.AddrFromSlice(r.Gw)
			out[p] = gw.Unmap()
		}
	}
	return out
}

// inNS runs fn on a locked OS thread switched into ns: sockets it creates
// belong to ns.
func inNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer func() { _ = netns.Set(orig) }()
	return fn()
}

// child is a speaker or reflector in its own process in a namespace.
type child struct {
	tb   testing.TB
	name string
	cmd  *exec.Cmd
	in   *json.Encoder
	out  *bufio.Scanner
	log  string
}

// startChild starts role ("speaker" or "reflector") in ns with cfg.
func (l *lab) startChild(name, ns, role string, cfg Config, peers []Peer) *child {
	l.tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		l.tb.Fatal(err)
	}
	logPath := filepath.Join(l.dir, fmt.Sprintf("%s-%d.log", strings.ReplaceAll(name, "/", "-"), time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		l.tb.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		l.tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		l.tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		l.tb.Fatalf("start %s: %v", name, err)
	}
	c := &child{tb: l.tb, name: name, cmd: cmd, in: json.NewEncoder(stdin), out: bufio.NewScanner(stdout), log: logPath}
	c.out.Buffer(make([]byte, 1<<20), 64<<20)
	l.tb.Cleanup(func() {
		c.kill()
		if l.tb.Failed() {
			b, _ := os.ReadFile(logPath)
			l.tb.Logf("---- log of %s ----\n%s", name, tail(string(b), 40))
		}
	})
	c.call(childReq{Op: "start", Config: &cfg})
	if len(peers) > 0 {
		c.call(childReq{Op: "peers", Peers: peers})
	}
	return c
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *child) call(req childReq) childResp {
	c.tb.Helper()
	resp, err := c.try(req)
	if err != nil {
		c.tb.Fatalf("%s: %s: %v", c.name, req.Op, err)
	}
	return resp
}

func (c *child) try(req childReq) (childResp, error) {
	if err := c.in.Encode(req); err != nil {
		return childResp{}, err
	}
	if !c.out.Scan() {
		return childResp{}, fmt.Errorf("child exited: %v", c.out.Err())
	}
	var resp childResp
	if err := json.Unmarshal(c.out.Bytes(), &resp); err != nil {
		return childResp{}, err
	}
	if resp.Err != "" {
		return resp, errors.New(resp.Err)
	}
	return resp, nil
}

func (c *child) status() Status {
	c.tb.Helper()
	return *c.call(childReq{Op: "status"}).Status
}

// kill ends the process the hard way (like a crashed agent) and reaps it.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

// waitFor polls cond until it holds; timeout only bounds a broken run.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s: %s", what, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tunnelLinks lists tunnel devices in ns.
func (l *lab) tunnelLinks(ns string) []string {
	h := l.handle(ns)
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		l.tb.Fatalf("links in %s: %v", ns, err)
	}
	var out []string
	for _, ln := range links {
		switch ln.Type() {
		case "vxlan", "geneve", "ipip", "gre", "gretap", "sit", "ip6tnl", "ip6gre", "vti", "wireguard":
			out = append(out, ln.Attrs().Name+"("+ln.Type()+")")
		}
	}
	return out
}

// tcpEcho serves one-line echoes in ns until the test ends.
func (l *lab) tcpEcho(ns, addr string) {
	l.tb.Helper()
	var ln net.Listener
	if err := inNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		l.tb.Fatalf("listen in %s: %v", ns, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			_, _ = c.Write([]byte("echo " + line))
			_ = c.Close()
		}
	}()
	l.tb.Cleanup(func() { _ = ln.Close(); <-done })
}

// tcpRoundTrip dials addr from ns and returns the echoed line.
func tcpRoundTrip(ns, addr, msg string) (string, error) {
	var conn net.Conn
	err := inNS(ns, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

func netnsHandle(ns string) (netns.NsHandle, error) { return netns.GetFromPath("/run/netns/" + ns) }

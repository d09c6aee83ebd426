package bgp

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// lab is a netlab.Lab with the BGP tests' helpers on top: netlink handles,
// route reads, speaker children.
type lab struct {
	*netlab.Lab
}

func newLab(tb testing.TB) *lab {
	tb.Helper()
	return &lab{Lab: netlab.New(tb)}
}

// handle opens a netlink handle in ns; the caller closes it.
func (l *lab) handle(ns string) *netlink.Handle {
	l.TB.Helper()
	h, err := netlab.Handle(ns)
	if err != nil {
		l.TB.Fatal(err)
	}
	return h
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
	l.TB.Helper()
	exe, err := os.Executable()
	if err != nil {
		l.TB.Fatal(err)
	}
	logPath := filepath.Join(l.Dir, fmt.Sprintf("%s-%d.log", strings.ReplaceAll(name, "/", "-"), time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		l.TB.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		l.TB.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		l.TB.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		l.TB.Fatalf("start %s: %v", name, err)
	}
	c := &child{tb: l.TB, name: name, cmd: cmd, in: json.NewEncoder(stdin), out: bufio.NewScanner(stdout), log: logPath}
	c.out.Buffer(make([]byte, 1<<20), 64<<20)
	l.TB.Cleanup(func() {
		c.kill()
		if l.TB.Failed() {
			b, _ := os.ReadFile(logPath)
			l.TB.Logf("---- log of %s ----\n%s", name, tail(string(b), 40))
		}
	})
	if os.Getenv(cpuProfileEnv) != "" {
		// Runs before the kill above (cleanups run last-in first-out).
		l.TB.Cleanup(func() { _, _ = c.try(childReq{Op: "stopprofile"}) })
	}
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

// tunnelLinks lists tunnel devices in ns.
func (l *lab) tunnelLinks(ns string) []string {
	h := l.handle(ns)
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		l.TB.Fatalf("links in %s: %v", ns, err)
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
	l.TB.Helper()
	var ln net.Listener
	if err := netlab.InNetns(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		l.TB.Fatalf("listen in %s: %v", ns, err)
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
	l.TB.Cleanup(func() { _ = ln.Close(); <-done })
}

// tcpRoundTrip dials addr from ns and returns the echoed line.
func tcpRoundTrip(ns, addr, msg string) (string, error) {
	var conn net.Conn
	err := netlab.InNetns(ns, func() (err error) {
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

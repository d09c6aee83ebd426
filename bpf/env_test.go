package bpf

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// The test binary doubles as the helper processes the root tests need: a
// client inside the balanced cgroup, and a loader that can be killed.
const roleEnv = "CM_BPF_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "client":
		os.Exit(clientMain())
	case "loader":
		os.Exit(loaderMain())
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, cgroups, bpffs and eBPF programs")
	}
}

func runPrefix(t testing.TB) string {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "cm" + hex.EncodeToString(b[:])
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// bpffs mounts a private bpffs, unmounted (with everything pinned in it) at
// cleanup.
func bpffs(t testing.TB) string {
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "cm")
}

// cgroup creates a cgroup v2 directory, removed at cleanup after its
// processes are gone.
func cgroup(t testing.TB, prefix string) string {
	dir := filepath.Join("/sys/fs/cgroup/unified", prefix)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		var err error
		for i := 0; i < 50; i++ {
			if err = os.Remove(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", dir, err)
	})
	return dir
}

// topo is a client netns and a backend netns joined by a veth. The backend
// side carries one address per backend, each with TCP and UDP echo servers
// that answer with their name.
type topo struct {
	prefix   string
	clientNS string
	serverNS string
	// backend name -> address (IPv4 and IPv6 listen on the same port)
	v4 map[string]netip.AddrPort
	v6 map[string]netip.AddrPort
}

const echoPort = 8080

func newTopo(t testing.TB, prefix string, backends int) *topo {
	tp := &topo{prefix: prefix, clientNS: prefix + "c", serverNS: prefix + "s",
		v4: map[string]netip.AddrPort{}, v6: map[string]netip.AddrPort{}}
	for _, ns := range []string{tp.clientNS, tp.serverNS} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("delete netns %s: %v: %s", ns, err, out)
			}
		})
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", prefix+"c", "netns", tp.clientNS, "type", "veth", "peer", "name", prefix+"s", "netns", tp.serverNS)
	run(t, "ip", "-n", tp.clientNS, "addr", "add", "10.77.0.1/24", "dev", prefix+"c")
	run(t, "ip", "-n", tp.clientNS, "addr", "add", "fd00:77::1/64", "dev", prefix+"c", "nodad")
	run(t, "ip", "-n", tp.clientNS, "link", "set", prefix+"c", "up")
	run(t, "ip", "-n", tp.serverNS, "link", "set", prefix+"s", "up")
	run(t, "ip", "-n", tp.serverNS, "addr", "add", "10.77.0.2/24", "dev", prefix+"s")
	// Default routes: service VIPs are routed nowhere but must be routable
	// for the unbalanced paths (direct connects, iptables DNAT).
	run(t, "ip", "-n", tp.clientNS, "route", "add", "default", "via", "10.77.0.2")
	run(t, "ip", "-n", tp.clientNS, "-6", "route", "add", "default", "via", "fd00:77::2", "dev", prefix+"c")
	run(t, "ip", "-n", tp.serverNS, "addr", "add", "fd00:77::2/64", "dev", prefix+"s", "nodad")
	for i := 1; i <= backends; i++ {
		name := fmt.Sprintf("be%d", i)
		a4 := netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)})
		a6 := netip.MustParseAddr(fmt.Sprintf("fd00:77::%x", 0x10+i))
		run(t, "ip", "-n", tp.serverNS, "addr", "add", a4.String()+"/32", "dev", prefix+"s")
		run(t, "ip", "-n", tp.serverNS, "addr", "add", a6.String()+"/128", "dev", prefix+"s", "nodad")
		tp.v4[name] = netip.AddrPortFrom(a4, echoPort)
		tp.v6[name] = netip.AddrPortFrom(a6, echoPort)
	}
	return tp
}

// inNetns runs fn on a thread switched into netns ns. Sockets created by fn
// stay in ns after it returns.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			runtime.UnlockOSThread()
			return
		}
		err = fn()
		if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
			// The thread stays locked and dies with the goroutine.
			errc <- fmt.Errorf("restore netns: %w", rerr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// serveEcho starts a TCP and a UDP echo server per backend in the server
// netns; each answers with its name. Stopped at cleanup.
func (tp *topo) serveEcho(t testing.TB) {
	var closers []io.Closer
	var wg sync.WaitGroup
	t.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	})
	err := inNetns(tp.serverNS, func() error {
		for _, set := range []map[string]netip.AddrPort{tp.v4, tp.v6} {
			for name, ap := range set {
				ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
				if err != nil {
					return err
				}
				closers = append(closers, ln)
				pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
				if err != nil {
					return err
				}
				closers = append(closers, pc)
				wg.Add(2)
				go func() {
					defer wg.Done()
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						c.Write([]byte(name + "\n"))
						c.Close()
					}
				}()
				go func() {
					defer wg.Done()
					buf := make([]byte, 64)
					for {
						_, from, err := pc.ReadFromUDPAddrPort(buf)
						if err != nil {
							return
						}
						pc.WriteToUDPAddrPort([]byte(name), from)
					}
				}()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("echo servers: %v", err)
	}
}

// clientResult is what a client process reports.
type clientResult struct {
	// Backends counts replies per backend name.
	Backends map[string]int `json:"backends"`
	// Errors lists failed attempts (at most the first 20).
	Errors    []string `json:"errors"`
	NumErrors int      `json:"numErrors"`
	// PeerNotVIP counts UDP replies whose source (recvfrom, or getpeername
	// of a connected socket) was not the VIP.
	PeerNotVIP int `json:"peerNotVIP"`
}

type clientSpec struct {
	Mode  string         `json:"mode"` // tcp, tcp6, udp, udpconn
	VIP   netip.AddrPort `json:"vip"`
	Count int            `json:"count"` // 0: loop until stdin closes
}

// runClient runs the client role in netns ns and cgroup cg and returns its
// report.
func runClient(t testing.TB, ns, cg string, spec clientSpec) clientResult {
	t.Helper()
	cmd, out, _ := startClient(t, ns, cg, spec)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client %+v: %v\n%s", spec, err, out.String())
	}
	return parseClient(t, out)
}

// startClient starts a client; with spec.Count 0 it loops until the returned
// stdin is closed.
func startClient(t testing.TB, ns, cg string, spec clientSpec) (*exec.Cmd, *bytes.Buffer, io.WriteCloser) {
	t.Helper()
	js, _ := json.Marshal(spec)
	cgf, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer cgf.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "--", self)
	cmd.Env = append(os.Environ(), roleEnv+"=client", "CM_CLIENT_SPEC="+string(js))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgf.Fd()), Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, &out, stdin
}

func parseClient(t testing.TB, out *bytes.Buffer) clientResult {
	t.Helper()
	var res clientResult
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatalf("client output: %v", err)
			}
			return res
		}
	}
	t.Fatalf("client printed no result:\n%s", out.String())
	return res
}

func clientMain() int {
	var spec clientSpec
	if err := json.Unmarshal([]byte(os.Getenv("CM_CLIENT_SPEC")), &spec); err != nil {
		fmt.Println("bad spec:", err)
		return 2
	}
	res := clientResult{Backends: map[string]int{}}
	stop := make(chan struct{})
	if spec.Count == 0 {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			close(stop)
		}()
	}
	for i := 0; spec.Count == 0 || i < spec.Count; i++ {
		if spec.Count == 0 {
			select {
			case <-stop:
				goto done
			default:
			}
		}
		name, peerOK, err := clientOnce(spec)
		if err != nil {
			res.NumErrors++
			if len(res.Errors) < 20 {
				res.Errors = append(res.Errors, err.Error())
			}
			continue
		}
		res.Backends[name]++
		if !peerOK {
			res.PeerNotVIP++
		}
	}
done:
	js, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", js)
	return 0
}

func clientOnce(spec clientSpec) (name string, peerIsVIP bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	switch spec.Mode {
	case "tcp6":
		// An IPv6 socket connecting to an IPv4-mapped VIP (dual-stack
		// applications do this); Go's net package refuses it, so raw calls.
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "", false, err
		}
		f := os.NewFile(uintptr(fd), "tcp6")
		defer f.Close()
		tv := unix.Timeval{Sec: 2}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(spec.VIP.Port()), Addr: spec.VIP.Addr().As16()}); err != nil {
			return "", false, fmt.Errorf("connect6 %s: %w", spec.VIP, err)
		}
		b, err := io.ReadAll(f)
		if err != nil {
			return "", false, err
		}
		return strings.TrimSpace(string(b)), true, nil
	case "tcp":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", spec.VIP.String())
		if err != nil {
			return "", false, err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		b, err := io.ReadAll(c)
		if err != nil {
			return "", false, err
		}
		return strings.TrimSpace(string(b)), true, nil
	case "udp":
		pc, err := net.ListenUDP("udp", nil)
		if err != nil {
			return "", false, err
		}
		defer pc.Close()
		pc.SetDeadline(deadline)
		if _, err := pc.WriteToUDPAddrPort([]byte("hi"), spec.VIP); err != nil {
			return "", false, err
		}
		buf := make([]byte, 64)
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return "", false, err
		}
		return string(buf[:n]), from.Addr().Unmap() == spec.VIP.Addr().Unmap() && from.Port() == spec.VIP.Port(), nil
	case "udpconn":
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(spec.VIP))
		if err != nil {
			return "", false, err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		// Ask the kernel, not Go's cached remote address.
		raw, err := c.SyscallConn()
		if err != nil {
			return "", false, err
		}
		var peer netip.AddrPort
		var perr error
		raw.Control(func(fd uintptr) {
			var sa unix.Sockaddr
			sa, perr = unix.Getpeername(int(fd))
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				peer = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
			case *unix.SockaddrInet6:
				peer = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
			}
		})
		if perr != nil {
			return "", false, perr
		}
		if _, err := c.Write([]byte("hi")); err != nil {
			return "", false, err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return "", false, err
		}
		return string(buf[:n]), peer.Addr().Unmap() == spec.VIP.Addr().Unmap() && peer.Port() == spec.VIP.Port(), nil
	}
	return "", false, fmt.Errorf("unknown mode %q", spec.Mode)
}

// loaderMain opens the datapath from the environment, programs the services
// given, says "ready" and waits to be killed, the way an agent would run.
func loaderMain() int {
	cfg := testConfig(os.Getenv("CM_CGROUP"), os.Getenv("CM_PINDIR"))
	var svcs []loadbalancer.Service
	if err := json.Unmarshal([]byte(os.Getenv("CM_SERVICES")), &svcs); err != nil {
		fmt.Println("bad services:", err)
		return 2
	}
	ctx := context.Background()
	dp, err := Open(ctx, cfg)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	for _, s := range svcs {
		if err := dp.UpsertService(ctx, s); err != nil {
			fmt.Println("upsert:", err)
			return 1
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // until killed or stdin closes
	dp.Close()
	return 0
}

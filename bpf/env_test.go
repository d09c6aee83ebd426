package bpf

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/netlab"
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

// topo is a client netns and a backend netns of a lab joined by a veth.
// The backend side carries one address per backend, each with TCP and UDP
// echo servers that answer with their name.
type topo struct {
	lab      *netlab.Lab
	clientNS string
	serverNS string
	// backend name -> address (IPv4 and IPv6 listen on the same port)
	v4 map[string]netip.AddrPort
	v6 map[string]netip.AddrPort
}

const echoPort = 8080

// newLab returns a lab (skipping without root) with a private bpffs and a
// cgroup for the datapath: the pin directory and the cgroup's path.
func newLab(t testing.TB) (l *netlab.Lab, pin, cg string) {
	t.Helper()
	l = netlab.New(t)
	return l, l.BPFFS(), l.Cgroup("cg")
}

func newTopo(l *netlab.Lab, backends int) *topo {
	l.TB.Helper()
	tp := &topo{lab: l, clientNS: l.Netns("c"), serverNS: l.Netns("s"),
		v4: map[string]netip.AddrPort{}, v6: map[string]netip.AddrPort{}}
	l.Veth(tp.clientNS, "c", tp.serverNS, "s")
	l.Addr(tp.clientNS, "c", "10.77.0.1/24", "fd00:77::1/64")
	l.Addr(tp.serverNS, "s", "10.77.0.2/24", "fd00:77::2/64")
	// Default routes: service VIPs are routed nowhere but must be routable
	// for the unbalanced paths (direct connects, iptables DNAT).
	l.Run("ip", "-n", tp.clientNS, "route", "add", "default", "via", "10.77.0.2")
	l.Run("ip", "-n", tp.clientNS, "-6", "route", "add", "default", "via", "fd00:77::2", "dev", "c")
	for i := 1; i <= backends; i++ {
		name := fmt.Sprintf("be%d", i)
		a4 := netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)})
		a6 := netip.MustParseAddr(fmt.Sprintf("fd00:77::%x", 0x10+i))
		l.Addr(tp.serverNS, "s", a4.String()+"/32", a6.String()+"/128")
		tp.v4[name] = netip.AddrPortFrom(a4, echoPort)
		tp.v6[name] = netip.AddrPortFrom(a6, echoPort)
	}
	return tp
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
	err := netlab.InNetns(tp.serverNS, func() error {
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
	// PeerNotVIP counts exchanges whose peer was not the VIP: a UDP
	// reply's source (recvfrom), or getpeername of a connected TCP or UDP
	// socket.
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
	cmd := exec.Command("nsenter", "--net="+netlab.NetnsPath(ns), "--", self)
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
		peer, perr := peerOf(fd)
		if perr != nil {
			return "", false, perr
		}
		b, err := io.ReadAll(f)
		if err != nil {
			return "", false, err
		}
		return strings.TrimSpace(string(b)), isVIP(peer, spec.VIP), nil
	case "tcp":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", spec.VIP.String())
		if err != nil {
			return "", false, err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return "", false, err
		}
		var peer netip.AddrPort
		var perr error
		raw.Control(func(fd uintptr) { peer, perr = peerOf(int(fd)) })
		if perr != nil {
			return "", false, perr
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return "", false, err
		}
		return strings.TrimSpace(string(b)), isVIP(peer, spec.VIP), nil
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
		raw.Control(func(fd uintptr) { peer, perr = peerOf(int(fd)) })
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
		return string(buf[:n]), isVIP(peer, spec.VIP), nil
	}
	return "", false, fmt.Errorf("unknown mode %q", spec.Mode)
}

// peerOf asks the kernel for a socket's peer (getpeername), not Go's
// cached remote address.
func peerOf(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("getpeername: %T", sa)
}

func isVIP(peer, vip netip.AddrPort) bool {
	return peer.Addr().Unmap() == vip.Addr().Unmap() && peer.Port() == vip.Port()
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

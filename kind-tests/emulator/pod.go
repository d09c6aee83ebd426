package emulator

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// EchoPort is the TCP and UDP port every pod's echo server listens on.
const EchoPort = 8080

// EchoDrainSeconds is the echo Deployments' preStop sleep: a deleted echo
// pod keeps serving that long (terminating but serving) while the mesh moves
// new connections to ready backends, as a production Deployment does. The
// emulated kubelet honours it like a real one.
const EchoDrainSeconds = 2

// podGateway is the node-side address of every pod veth: pods route
// everything through it, as with Calico's or Cilium's link-local gateway.
const podGateway = "169.254.1.1"

// Pod is an emulated pod: a network namespace behind a veth from its node's
// namespace, and an echo server answering with the pod's name on EchoPort
// (TCP: writes the name and closes; UDP: answers each datagram with it).
type Pod struct {
	Node      *Node
	Namespace string
	Name      string
	IP        netip.Addr
	Netns     string
	// HostLink is the node-side veth (in the node's namespace).
	HostLink string

	echo *echoServer
	once sync.Once
}

// AddPod creates pod namespace/name on the node and starts its echo server.
// The pod is reachable from every node that routes the node's pod CIDR.
func (n *Node) AddPod(ctx context.Context, namespace, name string) (*Pod, error) {
	r := n.Cluster.Run
	addr, err := n.allocateIP()
	if err != nil {
		return nil, err
	}
	k := r.nextPodIndex()
	p := &Pod{
		Node:      n,
		Namespace: namespace,
		Name:      name,
		IP:        addr,
		Netns:     fmt.Sprintf("%s-pod%d", r.Prefix, k),
		HostLink:  fmt.Sprintf("pod%d", k),
	}
	fail := func(err error) (*Pod, error) {
		_ = p.teardown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("pod %s/%s on %s: %w", namespace, name, n.Name, err)
	}
	if err := createNetns(ctx, r, p.Netns); err != nil {
		return fail(err)
	}
	if err := netlab.IP(ctx, n.Netns, "link", "add", p.HostLink, "type", "veth", "peer", "name", "eth0", "netns", p.Netns); err != nil {
		return fail(err)
	}
	for _, s := range [][]string{
		{"addr", "add", addr.String() + "/32", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", podGateway, "dev", "eth0", "scope", "link"},
		{"route", "add", "default", "via", podGateway, "dev", "eth0"},
	} {
		if err := netlab.IP(ctx, p.Netns, s...); err != nil {
			return fail(err)
		}
	}
	for _, s := range [][]string{
		{"addr", "add", podGateway + "/32", "dev", p.HostLink, "scope", "link"},
		{"link", "set", p.HostLink, "up"},
		{"route", "add", addr.String() + "/32", "dev", p.HostLink, "src", n.FabricIP.String()},
	} {
		if err := netlab.IP(ctx, n.Netns, s...); err != nil {
			return fail(err)
		}
	}
	echo, err := startEcho(p.Netns, name, EchoPort)
	if err != nil {
		return fail(err)
	}
	p.echo = echo
	n.mu.Lock()
	n.pods = append(n.pods, p)
	n.mu.Unlock()
	r.onClose("pod "+name, p.teardown)
	return p, nil
}

// Remove stops the pod's echo server and deletes its namespace, as a kubelet
// does when a pod is deleted. Connections to its IP fail from then on.
func (p *Pod) Remove(ctx context.Context) error {
	n := p.Node
	n.mu.Lock()
	for i, q := range n.pods {
		if q == p {
			n.pods = append(n.pods[:i], n.pods[i+1:]...)
			break
		}
	}
	n.mu.Unlock()
	return p.teardown(ctx)
}

// StopEcho stops the echo server but keeps the pod's network: its port is
// then closed and connections to it are refused, as when a container dies.
func (p *Pod) StopEcho() {
	if p.echo != nil {
		p.echo.close()
	}
}

func (p *Pod) teardown(ctx context.Context) error {
	var err error
	p.once.Do(func() {
		p.StopEcho()
		// Deleting the namespace deletes both ends of the veth; the /32
		// route on the node goes with its device.
		err = netlab.DelNetns(ctx, p.Netns)
	})
	return err
}

// echoServer answers with its name on TCP and UDP. Its goroutines end when
// close has closed both sockets.
type echoServer struct {
	name string
	tcp  net.Listener
	udp  net.PacketConn
	wg   sync.WaitGroup
	once sync.Once
}

func startEcho(ns, name string, port int) (*echoServer, error) {
	e := &echoServer{name: name}
	addr := ":" + strconv.Itoa(port)
	err := netlab.InNetns(ns, func() error {
		var err error
		if e.tcp, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		if e.udp, err = net.ListenPacket("udp4", addr); err != nil {
			e.tcp.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("echo %s: %w", name, err)
	}
	e.wg.Add(2)
	go e.serveTCP()
	go e.serveUDP()
	return e, nil
}

func (e *echoServer) serveTCP() {
	defer e.wg.Done()
	reply := []byte(e.name + "\n")
	for {
		c, err := e.tcp.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write(reply)
		c.Close()
	}
}

func (e *echoServer) serveUDP() {
	defer e.wg.Done()
	reply := []byte(e.name + "\n")
	buf := make([]byte, 1500)
	for {
		_, from, err := e.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = e.udp.WriteTo(reply, from)
	}
}

func (e *echoServer) close() {
	e.once.Do(func() {
		e.tcp.Close()
		e.udp.Close()
		e.wg.Wait()
	})
}

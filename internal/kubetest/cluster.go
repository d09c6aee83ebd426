package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/internal/proc"
	"github.com/clustermesh/clustermesh/pki"
)

// Options tune a cluster. The zero value (or nil) is a loopback
// etcd + kube-apiserver without a controller manager.
type Options struct {
	// ControllerManager also starts kube-controller-manager with the
	// controllers the mesh relies on: EndpointSlices for Services with
	// selectors and the namespace finalizer.
	ControllerManager bool
	// BindAddress is the address every process listens on; default
	// 127.0.0.1. The drills pass a fabric address so node namespaces can
	// reach the API.
	BindAddress string
	// ServiceCIDR is the ClusterIP range; default 10.96.0.0/16.
	ServiceCIDR string
	// StartTimeout bounds the wait for the API to become ready; default 90s
	// (cold starts on a loaded two-core machine take ~3-10 s).
	StartTimeout time.Duration
	// QPS and Burst of the returned client; defaults 500 and 1000 so
	// benchmarks that load thousands of objects are not throttled.
	QPS   float32
	Burst int
}

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds the certificates, the kubeconfig, etcd's data and the logs.
	Dir string
	// Kubeconfig is the path of an admin kubeconfig (group system:masters).
	Kubeconfig string
	// Config is the admin REST config the Kubeconfig describes.
	Config *rest.Config
	// Client is an admin clientset built from Config.
	Client kubernetes.Interface
	// URL is the kube-apiserver's https URL.
	URL string
	// EtcdURL is the client URL of the cluster's etcd (plain http on
	// loopback).
	EtcdURL string

	bindAddress string
	kubectl     string

	mu    sync.Mutex
	procs []*proc.Process
}

const adminToken = "clustermesh-kubetest-admin"

// StartProcess starts a cluster whose files live in dir (created if needed)
// and returns once the kube-apiserver reports ready. It is meant for
// harnesses outside `go test`; the caller must call Stop. ctx bounds the start
// only: the processes keep running after ctx is done.
func StartProcess(ctx context.Context, dir string, opts *Options) (*Cluster, error) {
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.BindAddress == "" {
		o.BindAddress = "127.0.0.1"
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.96.0.0/16"
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 90 * time.Second
	}
	if o.QPS == 0 {
		o.QPS = 500
	}
	if o.Burst == 0 {
		o.Burst = 1000
	}
	bind, err := netip.ParseAddr(o.BindAddress)
	if err != nil {
		return nil, fmt.Errorf("kubetest: bind address %q: %w", o.BindAddress, err)
	}

	bins := map[string]string{}
	need := []string{Etcd, KubeAPIServer}
	if o.ControllerManager {
		need = append(need, KubeControllerManager)
	}
	for _, name := range need {
		p, err := Binary(name)
		if err != nil {
			return nil, fmt.Errorf("kubetest: %w", err)
		}
		bins[name] = p
	}
	kubectl, _ := Binary(Kubectl) // optional: only Cluster.Kubectl needs it

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	c := &Cluster{Dir: dir, bindAddress: bind.String(), kubectl: kubectl}
	ctx, cancel := context.WithTimeout(ctx, o.StartTimeout)
	defer cancel()
	if err := c.start(ctx, bins, o); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context, bins map[string]string, o Options) error {
	if err := c.writeCerts(); err != nil {
		return err
	}

	// etcd. Ports are picked free just before the process binds them; a
	// rare collision with another process shows up as an early exit and
	// is retried with fresh ports.
	var etcd *proc.Process
	for attempt := 0; ; attempt++ {
		ports, err := freePorts(c.bindAddress, 2)
		if err != nil {
			return err
		}
		client := "http://" + net.JoinHostPort(c.bindAddress, strconv.Itoa(ports[0]))
		peer := "http://" + net.JoinHostPort(c.bindAddress, strconv.Itoa(ports[1]))
		etcd, err = c.spawn("etcd", bins[Etcd],
			"--name=kubetest",
			"--data-dir="+filepath.Join(c.Dir, "etcd-data"),
			"--listen-client-urls="+client,
			"--advertise-client-urls="+client,
			"--listen-peer-urls="+peer,
			"--initial-advertise-peer-urls="+peer,
			"--initial-cluster=kubetest="+peer,
			// Test data: durability is not worth the fsync latency.
			"--unsafe-no-fsync",
			"--log-level=warn",
		)
		if err != nil {
			return err
		}
		c.EtcdURL = client
		if err = etcd.WaitTCP(ctx, net.JoinHostPort(c.bindAddress, strconv.Itoa(ports[0]))); err == nil {
			break
		}
		if attempt == 2 || ctx.Err() != nil {
			return fmt.Errorf("kubetest: etcd: %w", err)
		}
		_ = etcd.Stop(ctx)
	}

	for attempt := 0; ; attempt++ {
		ports, err := freePorts(c.bindAddress, 1)
		if err != nil {
			return err
		}
		c.URL = "https://" + net.JoinHostPort(c.bindAddress, strconv.Itoa(ports[0]))
		api, err := c.spawn("kube-apiserver", bins[KubeAPIServer],
			"--etcd-servers="+c.EtcdURL,
			"--bind-address="+c.bindAddress,
			"--advertise-address="+c.bindAddress,
			"--secure-port="+strconv.Itoa(ports[0]),
			"--tls-cert-file="+filepath.Join(c.Dir, "apiserver.crt"),
			"--tls-private-key-file="+filepath.Join(c.Dir, "apiserver.key"),
			"--client-ca-file="+filepath.Join(c.Dir, "ca.crt"),
			"--token-auth-file="+filepath.Join(c.Dir, "tokens.csv"),
			"--authorization-mode=RBAC",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file="+filepath.Join(c.Dir, "sa.key"),
			"--service-account-signing-key-file="+filepath.Join(c.Dir, "sa.key"),
			"--service-cluster-ip-range="+o.ServiceCIDR,
			// No kubelet mints tokens here and the "default"
			// ServiceAccount would only exist once a controller made
			// it: Pods are admitted without one.
			"--disable-admission-plugins=ServiceAccount",
			// The endpoints of the "kubernetes" Service would carry a
			// loopback address, which validation refuses.
			"--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false",
			"--profiling=false",
			"--v=0",
		)
		if err != nil {
			return err
		}
		if err := c.writeKubeconfig(o); err != nil {
			return err
		}
		err = c.waitReady(ctx, api)
		if err == nil {
			break
		}
		if attempt == 2 || ctx.Err() != nil || !api.Exited() {
			return fmt.Errorf("kubetest: kube-apiserver: %w", err)
		}
		_ = api.Stop(ctx)
	}

	if o.ControllerManager {
		kcm, err := c.spawn("kube-controller-manager", bins[KubeControllerManager],
			"--kubeconfig="+c.Kubeconfig,
			"--authentication-kubeconfig="+c.Kubeconfig,
			"--authorization-kubeconfig="+c.Kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			// The protection controllers lift the finalizers the API
			// server puts on claims and volumes, so that deleting
			// them completes, as on a real cluster.
			"--controllers=endpointslice-controller,endpointslice-mirroring-controller,namespace-controller,garbage-collector-controller,"+
				"persistentvolume-protection-controller,persistentvolumeclaim-protection-controller",
			"--concurrent-service-endpoint-syncs=10",
			"--v=0",
		)
		if err != nil {
			return err
		}
		// The controller manager has no readiness endpoint here (its
		// port is off); an early crash is what we can detect.
		select {
		case <-kcm.Done():
			return fmt.Errorf("kubetest: kube-controller-manager exited at start: %s", kcm.Tail(tailBytes))
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// writeCerts writes a CA, the apiserver's serving certificate, the
// service-account signing key and the static admin token.
func (c *Cluster) writeCerts() error {
	ca, err := pki.NewCA("kubetest-ca", 0)
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(c.bindAddress)}
	crt, key, err := ca.Issue(pki.IssueOptions{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPs:        ips,
		Server:     true,
	})
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("kubetest: service-account key: %w", err)
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return fmt.Errorf("kubetest: service-account key: %w", err)
	}
	files := map[string][]byte{
		"ca.crt":        ca.CertPEM(),
		"apiserver.crt": crt,
		"apiserver.key": key,
		"sa.key":        pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}),
		"tokens.csv":    []byte(adminToken + `,admin,admin,"system:masters"` + "\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), b, 0o600); err != nil {
			return fmt.Errorf("kubetest: %w", err)
		}
	}
	return nil
}

func (c *Cluster) writeKubeconfig(o Options) error {
	caPEM, err := os.ReadFile(filepath.Join(c.Dir, "ca.crt"))
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: adminToken}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin"}
	cfg.CurrentContext = "kubetest"
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, c.Kubeconfig); err != nil {
		return fmt.Errorf("kubetest: write kubeconfig: %w", err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubetest: kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = o.QPS, o.Burst
	c.Config = rc
	c.Client, err = kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubetest: clientset: %w", err)
	}
	return nil
}

func (c *Cluster) waitReady(ctx context.Context, api *proc.Process) error {
	err := poll.Until(ctx, func(ctx context.Context) error {
		if api.Exited() {
			return poll.Final(fmt.Errorf("exited before ready: %w: %s", api.Err(), api.Tail(tailBytes)))
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		if err != nil {
			return fmt.Errorf("readyz: %w: %s", err, bytes.TrimSpace(body))
		}
		return nil
	})
	if err != nil && !api.Exited() {
		return fmt.Errorf("not ready: %w; log %s", err, api.LogPath)
	}
	return err
}

// tailBytes is how much of a process's log goes into an error or report.
const tailBytes = 4096

// spawn starts a child writing its output to <dir>/<name>.log.
func (c *Cluster) spawn(name, bin string, args ...string) (*proc.Process, error) {
	p, err := proc.Start(proc.Spec{Name: name, Path: bin, Args: args, LogDir: c.Dir})
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// Stop terminates every process (SIGTERM, then SIGKILL after proc.StopGrace) in the
// reverse order of their start. The directory is left for the caller.
func (c *Cluster) Stop() {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		_ = procs[i].Stop(context.Background())
	}
}

// Kubectl runs the hack-built kubectl against the cluster and returns its
// combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	if c.kubectl == "" {
		return nil, fmt.Errorf("kubetest: %s: %w", Kubectl, ErrMissingBinary)
	}
	// A request timeout keeps a wedged API from hanging a test forever.
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig=" + c.Kubeconfig, "--request-timeout=60s"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %v: %w: %s", args, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Logs returns the tail of every process's log, for failure reports.
func (c *Cluster) Logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b bytes.Buffer
	for _, p := range c.procs {
		fmt.Fprintf(&b, "==> %s (%s)\n%s\n", p.Spec.Name, p.LogPath, p.Tail(tailBytes))
	}
	return b.String()
}

// freePorts reserves n distinct free TCP ports on addr by listening on port
// 0, then releases them for the child processes to bind.
func freePorts(addr string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			return nil, fmt.Errorf("kubetest: free port on %s: %w", addr, err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// RandomSuffix returns n random hex characters, for names unique per run.
func RandomSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)[:n]
}

// Pids returns the process IDs of the cluster's running processes, e.g. for
// a harness that moves them into a cgroup.
func (c *Cluster) Pids() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for _, p := range c.procs {
		if !p.Exited() {
			out = append(out, p.Pid())
		}
	}
	return out
}

package mesh

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/pki"
)

// Secrets of the flow observers' access (docs/observability.md).
const (
	// SecretObserveCA is the cluster's observe CA (ca.crt, ca.key): it
	// signs the client certificates of this cluster's observers. Unlike the
	// mesh CA it is never copied to another cluster, so no peer can act as
	// one of this cluster's observers.
	SecretObserveCA = "clustermesh-observe-ca"
	// SecretObserveServer is the agents' observe server certificate,
	// issued by the mesh CA for observe.ServerName(cluster).
	SecretObserveServer = "clustermesh-observe-server"
	// SecretObserveClients holds observe.ClientCAFile(c) for every cluster
	// c whose observers the agents serve: the cluster's own always, a
	// peer's once an operator of this cluster allowed it.
	SecretObserveClients = "clustermesh-observe-clients"
)

// ObserverCertLifetime is the lifetime of the client certificate the CLI
// issues itself for one observe run.
const ObserverCertLifetime = time.Hour

// maxNodesPerCluster bounds what one cluster's store may make the CLI
// dial: a peer listing more nodes than that has its list cut (and said so).
const maxNodesPerCluster = 5000

// ensureObserveAccess creates the cluster's observe CA if it has none and
// makes sure its own observers are allowed; peers' grants are kept.
func (c *Cluster) ensureObserveAccess(ctx context.Context, cluster string) error {
	s, err := c.getSecret(ctx, SecretObserveCA)
	if err != nil {
		return err
	}
	var caPEM []byte
	if s != nil && len(s.Data[KeyCACert]) > 0 {
		caPEM = s.Data[KeyCACert]
	} else {
		ca, err := pki.NewCA("clustermesh observe CA "+cluster, 0)
		if err != nil {
			return fmt.Errorf("context %s: %w", c.Context, err)
		}
		if err := c.applySecret(ctx, SecretObserveCA, corev1.SecretTypeOpaque, map[string][]byte{KeyCACert: ca.CertPEM(), KeyCAKey: ca.KeyPEM()}); err != nil {
			return err
		}
		caPEM = ca.CertPEM()
	}
	return c.updateObserveClients(ctx, func(data map[string][]byte) { data[observe.ClientCAFile(cluster)] = caPEM })
}

// ObserveCA returns the cluster's observe CA certificate (PEM), what a
// peer's operator needs to allow this cluster's observers.
func (c *Cluster) ObserveCA(ctx context.Context) ([]byte, error) {
	s, err := c.getSecret(ctx, SecretObserveCA)
	if err != nil {
		return nil, err
	}
	if s == nil || len(s.Data[KeyCACert]) == 0 {
		return nil, fmt.Errorf("context %s: %w: secret %s/%s not found (re-run enable with this version)", c.Context, ErrNotEnabled, c.Namespace, SecretObserveCA)
	}
	return s.Data[KeyCACert], nil
}

// AllowObservers lets the observers of cluster peer, whose observe CA is
// caPEM, read the flows of this cluster's agents.
func (c *Cluster) AllowObservers(ctx context.Context, peer string, caPEM []byte) error {
	if err := api.ValidateClusterName(peer); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	certs, err := pki.ParseCertificates(caPEM)
	if err != nil {
		return fmt.Errorf("%w: observe CA of %s: %w", ErrInvalidArgument, peer, err)
	}
	for _, crt := range certs {
		if !crt.IsCA {
			return fmt.Errorf("%w: observe CA of %s: %q is not a CA certificate", ErrInvalidArgument, peer, crt.Subject.CommonName)
		}
	}
	return c.updateObserveClients(ctx, func(data map[string][]byte) { data[observe.ClientCAFile(peer)] = caPEM })
}

// RevokeObservers withdraws what AllowObservers granted to peer. The
// cluster's own observers cannot be revoked this way.
func (c *Cluster) RevokeObservers(ctx context.Context, self, peer string) error {
	if peer == self {
		return fmt.Errorf("%w: %s is this cluster; its own observers are always allowed", ErrInvalidArgument, peer)
	}
	return c.updateObserveClients(ctx, func(data map[string][]byte) { delete(data, observe.ClientCAFile(peer)) })
}

// AllowedObservers lists the clusters whose observers this cluster's agents
// serve.
func (c *Cluster) AllowedObservers(ctx context.Context) ([]string, error) {
	s, err := c.getSecret(ctx, SecretObserveClients)
	if err != nil || s == nil {
		return nil, err
	}
	var out []string
	for k := range s.Data {
		if cl, ok := observe.ClusterOfClientCAFile(k); ok {
			out = append(out, cl)
		}
	}
	sort.Strings(out)
	return out, nil
}

// updateObserveClients edits the clients Secret with read-modify-write,
// retried on conflict: grants made by other operators are kept.
func (c *Cluster) updateObserveClients(ctx context.Context, mutate func(map[string][]byte)) error {
	secrets := c.Kube.CoreV1().Secrets(c.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := secrets.Get(ctx, SecretObserveClients, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretObserveClients, Namespace: c.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "clustermesh"}}, Type: corev1.SecretTypeOpaque, Data: map[string][]byte{}}
			mutate(s.Data)
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: FieldManager})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), SecretObserveClients, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		data := maps.Clone(s.Data)
		if data == nil {
			data = map[string][]byte{}
		}
		mutate(data)
		if maps.EqualFunc(data, s.Data, bytes.Equal) {
			return nil
		}
		s.Data = data
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{FieldManager: FieldManager})
		return err
	})
	if err != nil {
		return fmt.Errorf("context %s: secret %s/%s: %w", c.Context, c.Namespace, SecretObserveClients, err)
	}
	return nil
}

// ObserveOptions select the flows `clustermesh observe` prints.
type ObserveOptions struct {
	Request observe.Request
	// Clusters limits the clusters asked (empty: this one and every
	// connected one).
	Clusters []string
	// Port is the agents' observe port (0: observe.DefaultPort).
	Port int
	// DialTimeout bounds each agent's connection (0: 3 s).
	DialTimeout time.Duration
	// Window is how long live flows are held to come out in time order
	// (0: 1 s).
	Window time.Duration
	// StoreEndpoint overrides this cluster's store endpoint (see
	// StoreOptions).
	StoreEndpoint string
	Log           *slog.Logger
}

// ObserveTarget is one agent asked for flows.
type ObserveTarget struct {
	Cluster, Node string
	Addr          netip.AddrPort
}

func (t ObserveTarget) String() string {
	if t.Node == "" {
		return t.Cluster
	}
	return t.Cluster + "/" + t.Node + " (" + t.Addr.String() + ")"
}

// Missing is an agent (or a whole cluster, Node empty) whose flows are not
// in the output, and why.
type Missing struct {
	Target ObserveTarget
	Err    error
}

// ObserveSummary tells how complete the output was.
type ObserveSummary struct {
	Asked, Answered int
	Flows           int
	Missing         []Missing
	// Late counts live flows printed out of time order (later than the
	// merge window).
	Late int
}

// ErrNoAgent: no agent of any cluster could be asked for flows.
var ErrNoAgent = errors.New("no agent answered")

// Observe asks every agent of this cluster and, through the stores, of
// every connected cluster, for its flows and hands them to emit in time
// order: the whole replay sorted (and cut to Request.Last), then with
// Follow the live flows, merged within Window. Agents and clusters that
// cannot be asked are passed to missing as they are found, and the output
// goes on without them. It returns when every stream ended (or, with
// Follow, when ctx ends).
func Observe(ctx context.Context, c *Cluster, opts ObserveOptions, emit func(observe.Flow), missing func(Missing)) (*ObserveSummary, error) {
	log := logging.OrDiscard(opts.Log)
	if opts.Port == 0 {
		opts.Port = observe.DefaultPort
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 3 * time.Second
	}
	if opts.Window == 0 {
		opts.Window = time.Second
	}
	sum := &ObserveSummary{}
	report := func(m Missing) {
		sum.Missing = append(sum.Missing, m)
		log.Warn("flows missing", "cluster", m.Target.Cluster, "node", m.Target.Node, "error", m.Err)
		if missing != nil {
			missing(m)
		}
	}
	cert, err := c.observerCertificate(ctx)
	if err != nil {
		return nil, err
	}
	groups, err := c.observeTargets(ctx, opts, report)
	if err != nil {
		return nil, err
	}

	type result struct {
		t    ObserveTarget
		f    observe.Flow
		err  error
		done bool
	}
	results := make(chan result, 1024)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, g := range groups {
		tcfg, err := observe.ClientTLS(cert, g.roots, g.cluster)
		if err != nil {
			report(Missing{Target: ObserveTarget{Cluster: g.cluster}, Err: err})
			continue
		}
		hc := &http.Client{Transport: &http.Transport{
			TLSClientConfig:     tcfg,
			DialContext:         (&net.Dialer{Timeout: opts.DialTimeout}).DialContext,
			TLSHandshakeTimeout: opts.DialTimeout,
			// The header is the agent's answer to the request; the
			// body may stream forever with Follow.
			ResponseHeaderTimeout: 2 * opts.DialTimeout,
		}}
		for _, t := range g.targets {
			sum.Asked++
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := observe.Stream(ctx, hc, "https://"+t.Addr.String(), opts.Request, func(f observe.Flow) error {
					select {
					case results <- result{t: t, f: f}:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				})
				select {
				case results <- result{t: t, err: err, done: true}:
				case <-ctx.Done():
				}
			}()
		}
	}
	go func() { wg.Wait(); close(results) }()

	if sum.Asked == 0 {
		return sum, fmt.Errorf("context %s: %w: no agent found to ask", c.Context, ErrNoAgent)
	}
	var (
		replay []observe.Flow
		merger = observe.NewMerger(opts.Window)
		start  = time.Now()
		tick   = time.NewTicker(opts.Window / 4)
	)
	defer tick.Stop()
	out := func(fs []observe.Flow) {
		for _, f := range fs {
			sum.Flows++
			emit(f)
		}
	}
	flushReplay := func() {
		observe.SortByTime(replay)
		out(observe.LastN(replay, opts.Request.Last))
		replay = nil
	}
	live := false
	for {
		select {
		case r, ok := <-results:
			if !ok {
				if !live {
					flushReplay()
				}
				out(merger.Flush())
				sum.Late = merger.Late
				if sum.Answered == 0 {
					return sum, fmt.Errorf("context %s: %w: %d agents asked", c.Context, ErrNoAgent, sum.Asked)
				}
				return sum, nil
			}
			if r.done {
				if r.err != nil && !(errors.Is(r.err, context.Canceled) && ctx.Err() != nil) {
					report(Missing{Target: r.t, Err: explainObserveError(r.t, r.err)})
				} else {
					sum.Answered++
				}
				continue
			}
			if live {
				merger.Add(r.f)
			} else {
				replay = append(replay, r.f)
			}
		case now := <-tick.C:
			if !opts.Request.Follow {
				continue
			}
			// Follow: the replays are printed together once they had a
			// window to arrive; from then on everything goes through the
			// merger.
			if !live && now.Sub(start) >= opts.Window {
				live = true
				flushReplay()
			}
			out(merger.Ready(now))
		}
	}
}

// explainObserveError turns a failed stream into what an operator can act
// on.
func explainObserveError(t ObserveTarget, err error) error {
	switch {
	case observe.IsRefused(err):
		return fmt.Errorf("cluster %s does not allow this cluster's observers (its operator runs `clustermesh observe allow --context <%s> --from-context <this cluster>`): %w", t.Cluster, t.Cluster, err)
	case errors.Is(err, observe.ErrStatus):
		return err
	}
	return fmt.Errorf("unreachable: %w", err)
}

// observerCertificate issues a short-lived observer certificate with the
// cluster's observe CA.
func (c *Cluster) observerCertificate(ctx context.Context) (tls.Certificate, error) {
	s, err := c.getSecret(ctx, SecretObserveCA)
	if err != nil {
		return tls.Certificate{}, err
	}
	if s == nil {
		return tls.Certificate{}, fmt.Errorf("context %s: %w: secret %s/%s not found (re-run enable with this version)", c.Context, ErrNotEnabled, c.Namespace, SecretObserveCA)
	}
	ca, err := pki.LoadCA(s.Data[KeyCACert], s.Data[KeyCAKey])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("context %s: secret %s/%s: %w", c.Context, c.Namespace, SecretObserveCA, err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.IssueOptions{CommonName: observe.ClientCommonName, Client: true, Lifetime: ObserverCertLifetime})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// targetGroup are the agents of one cluster and the CA bundle their
// server certificates chain to.
type targetGroup struct {
	cluster string
	roots   []byte
	targets []ObserveTarget
}

// observeTargets lists the agents to ask: this cluster's nodes from its own
// store, each connected cluster's nodes from that cluster's store (with the
// credentials this cluster's agents use). A store that cannot be read makes
// its cluster missing, not the run.
func (c *Cluster) observeTargets(ctx context.Context, opts ObserveOptions, report func(Missing)) ([]targetGroup, error) {
	want := func(name string) bool {
		if len(opts.Clusters) == 0 {
			return true
		}
		for _, n := range opts.Clusters {
			if n == name {
				return true
			}
		}
		return false
	}
	own, info, err := c.OpenStore(ctx, StoreOptions{Endpoint: opts.StoreEndpoint})
	if err != nil {
		return nil, err
	}
	defer own.Close()
	admin, err := c.credentials(ctx, SecretAdmin)
	if err != nil {
		return nil, err
	}
	var groups []targetGroup
	if want(info.Name) {
		g := targetGroup{cluster: info.Name, roots: admin.CA}
		if g.targets, err = nodeTargets(ctx, own, info.Name, opts.Port); err != nil {
			report(Missing{Target: ObserveTarget{Cluster: info.Name}, Err: fmt.Errorf("list nodes: %w", err)})
		}
		groups = append(groups, g)
	}
	s, err := c.ClustersSecret(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := Entries(s)
	if err != nil {
		report(Missing{Target: ObserveTarget{Cluster: "?"}, Err: err})
	}
	for _, e := range entries {
		if e.Name == info.Name || !want(e.Name) {
			continue
		}
		g := targetGroup{cluster: e.Name, roots: e.CA}
		err := func() error {
			cli, err := openStore(ctx, e.Endpoint, Credentials{CA: e.CA, Cert: e.Cert, Key: e.Key})
			if err != nil {
				return err
			}
			defer cli.Close()
			g.targets, err = nodeTargets(ctx, cli, e.Name, opts.Port)
			return err
		}()
		if err != nil {
			report(Missing{Target: ObserveTarget{Cluster: e.Name}, Err: fmt.Errorf("its store cannot be read, so its nodes are unknown: %w", err)})
		}
		if len(g.targets) > 0 {
			groups = append(groups, g)
		}
	}
	return groups, nil
}

// nodeTargets reads the nodes cluster exports and makes each node's first
// address a target. Nodes that do not decode, or beyond
// maxNodesPerCluster, are left out.
func nodeTargets(ctx context.Context, cli *kvstore.Client, cluster string, port int) ([]ObserveTarget, error) {
	kvs, err := cli.List(ctx, api.ClusterPrefix(api.KindNode, cluster), kvstore.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []ObserveTarget
	for _, kv := range kvs {
		if len(out) == maxNodesPerCluster {
			return out, fmt.Errorf("cluster %s lists more than %d nodes; the rest are not asked", cluster, maxNodesPerCluster)
		}
		obj, err := api.Decode(kv.Key, kv.Value)
		if err != nil {
			continue
		}
		n, ok := obj.(*api.Node)
		if !ok || n.Cluster != cluster || len(n.Addresses) == 0 {
			continue
		}
		out = append(out, ObserveTarget{Cluster: cluster, Node: n.Name, Addr: netip.AddrPortFrom(n.Addresses[0], uint16(port))})
	}
	return out, nil
}

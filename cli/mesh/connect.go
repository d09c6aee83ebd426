package mesh

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki"
)

// ConnectOptions configure connect.
type ConnectOptions struct {
	// DestinationEndpoints override the endpoint of destinations, keyed by
	// kubeconfig context.
	DestinationEndpoints map[string]string
	// SkipReachability skips the TLS dial of every endpoint (for operators
	// whose laptop cannot reach the stores; the agents will report).
	SkipReachability bool
	// WaitFor is how long connect keeps retrying while the only problems
	// are stores that do not answer yet (a peer whose apiserver is still
	// starting); zero means DefaultStoreWait, negative fails at once.
	WaitFor time.Duration
	// Progress, if set, gets a line each time the reason to wait changes.
	Progress func(line string)
	// CAs are the CAs of clusters whose CA key is kept offline, keyed by
	// kubeconfig context: connect issues each side's peer certificate from
	// the other side's CA.
	CAs map[string]*pki.CA
	Log *slog.Logger
}

// member is everything connect needs from one side.
type member struct {
	c        *Cluster
	info     Info
	ca       trustAnchor
	remote   Credentials // this cluster's own read-only certificate, which connect's checks dial its store with
	podCIDRs []netip.Prefix
	existing []Entry // current entries of its clusters Secret
	gossip   []byte  // memberlist key
}

func loadMember(ctx context.Context, c *Cluster, endpointOverride string) (*member, error) {
	info, err := c.ReadInfo(ctx)
	if err != nil {
		return nil, err
	}
	if endpointOverride != "" {
		if _, err := endpointHost(endpointOverride); err != nil {
			return nil, fmt.Errorf("context %s: %w", c.Context, err)
		}
		info.Endpoint = endpointOverride
	}
	ca, err := c.trustAnchor(ctx)
	if err != nil {
		return nil, err
	}
	remote, err := c.credentials(ctx, SecretRemote)
	if err != nil {
		return nil, err
	}
	cidrs, err := c.PodCIDRs(ctx)
	if err != nil {
		return nil, err
	}
	s, err := c.ClustersSecret(ctx)
	if err != nil {
		return nil, err
	}
	existing, err := Entries(s)
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", c.Context, err)
	}
	gossip, err := c.GossipKey(ctx)
	if err != nil {
		return nil, err
	}
	return &member{c: c, info: *info, ca: ca, remote: remote, podCIDRs: cidrs, existing: existing, gossip: gossip}, nil
}

// PodCIDRs returns the pod CIDRs of every node (spec.podCIDRs).
func (c *Cluster) PodCIDRs(ctx context.Context) ([]netip.Prefix, error) {
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: list nodes: %w", c.Context, err)
	}
	var out []netip.Prefix
	for _, n := range nodes.Items {
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, s := range cidrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("context %s: node %s: pod CIDR %q: %w", c.Context, n.Name, s, err)
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// checkPair reports every reason a and b cannot be connected.
func checkPair(ctx context.Context, a, b *member, skipDial bool) []Problem {
	var ps []Problem
	an, bn := a.info.Name, b.info.Name
	if an == bn {
		ps = append(ps, problem(ErrNameCollision,
			fmt.Sprintf("clusters must have unique names; re-enable one in a fresh install with another --cluster-name (delete namespace %s in context %s first)", b.c.Namespace, b.c.Context),
			"contexts %s and %s are both named %q", a.c.Context, b.c.Context, an))
	}
	if a.info.ID == b.info.ID {
		ps = append(ps, problem(ErrIDCollision,
			fmt.Sprintf("give each cluster a unique --cluster-id: delete namespace %s in context %s and run clustermesh enable %s --cluster-name %s --cluster-id %d (the lowest ID unused by these clusters and their peers)",
				b.c.Namespace, b.c.Context, b.c.ctxFlag(), bn, unusedID(a, b)),
			"clusters %s (context %s) and %s (context %s) both have cluster ID %d", an, a.c.Context, bn, b.c.Context, a.info.ID))
	}
	if a.info.MaxClusterID != b.info.MaxClusterID {
		ps = append(ps, problem(ErrMaxIDMismatch, "enable every cluster of a mesh with the same --max-cluster-id",
			"cluster %s has max cluster ID %d, cluster %s has %d", an, a.info.MaxClusterID, bn, b.info.MaxClusterID))
	}
	// Clusters already connected to one side must not clash with the other.
	for _, pair := range [][2]*member{{a, b}, {b, a}} {
		x, y := pair[0], pair[1]
		for _, e := range x.existing {
			if e.Name == x.info.Name || e.Name == y.info.Name {
				if e.Name == y.info.Name && e.ID != 0 && e.ID != y.info.ID {
					ps = append(ps, problem(ErrIDCollision,
						fmt.Sprintf("disconnect the stale entry first: clustermesh disconnect %s --destination-cluster %s", x.c.ctxFlag(), e.Name),
						"cluster %s already has an entry for %s with cluster ID %d, but %s now has ID %d", x.info.Name, e.Name, e.ID, y.info.Name, y.info.ID))
				}
				continue
			}
			if e.ID == y.info.ID {
				ps = append(ps, problem(ErrIDCollision,
					fmt.Sprintf("cluster IDs must be unique in the mesh; give %s another --cluster-id or disconnect %s from %s", y.info.Name, e.Name, x.info.Name),
					"cluster %s is connected to %s, which has cluster ID %d, the same as %s", x.info.Name, e.Name, e.ID, y.info.Name))
			}
		}
	}
	// Clusters need not share a CA: connect issues each side's peer
	// certificate from the other side's CA (see peerCredentials).
	if !bytes.Equal(a.gossip, b.gossip) {
		ps = append(ps, problem(ErrUntrusted,
			fmt.Sprintf("share %s's gossip key: clustermesh enable %s --cluster-name %s --cluster-id %d --inherit-ca-from %s", an, b.c.ctxFlag(), bn, b.info.ID, a.c.Context),
			"clusters %s and %s have different gossip keys (secret %s): their agents could not exchange node health", an, bn, SecretGossipKey))
	}
	for _, pa := range a.podCIDRs {
		for _, pb := range b.podCIDRs {
			if pa.Overlaps(pb) {
				ps = append(ps, problem(ErrCIDROverlap,
					"pod IPs are routed natively between clusters, so every cluster needs its own pod address range; change the cluster-cidr of one cluster",
					"pod CIDR %s of cluster %s overlaps pod CIDR %s of cluster %s", pa, an, pb, bn))
			}
		}
	}
	if skipDial || len(ps) > 0 {
		return ps
	}
	// Each side's agents will dial the other with a certificate of the
	// other's CA. The check, run before anything changes, dials with the
	// destination's own read-only certificate: it proves the endpoint, the
	// server identity and a read under the store's rules.
	for _, pair := range [][2]*member{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		if to.info.Endpoint == "" {
			ps = append(ps, problem(ErrUnreachable, fmt.Sprintf("re-run clustermesh enable %s with --endpoint", to.c.ctxFlag()),
				"cluster %s records no endpoint", to.info.Name))
			continue
		}
		creds := to.remote
		creds.CA = to.ca.pem
		cn, err := checkTLS(ctx, to.info.Endpoint, creds)
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) && len(verr.UnverifiedCertificates) > 0 {
			// The connection pins to's CA: a server of another CA is
			// another cluster's store (or an impostor).
			ps = append(ps, problem(ErrWrongCluster,
				fmt.Sprintf("point %s's endpoint at its own clustermesh-apiserver (clustermesh enable ... --endpoint, or --destination-endpoint)", to.info.Name),
				"endpoint %s of cluster %s presents the certificate of %q, not issued by %s's CA", to.info.Endpoint, to.info.Name,
				strings.TrimSuffix(verr.UnverifiedCertificates[0].Subject.CommonName, ".clustermesh"), to.info.Name))
			continue
		}
		if err != nil {
			ps = append(ps, problem(ErrUnreachable,
				fmt.Sprintf("check that the clustermesh-apiserver of %s runs (clustermesh status %s) and that %s is reachable from %s's nodes; or pass --destination-endpoint",
					to.info.Name, to.c.ctxFlag(), to.info.Endpoint, from.info.Name),
				"cluster %s cannot reach the store of %s at %s: %v", from.info.Name, to.info.Name, to.info.Endpoint, err))
			continue
		}
		if want := to.info.Name + ServerNameSuffix; cn != want {
			ps = append(ps, problem(ErrWrongCluster,
				fmt.Sprintf("point %s's endpoint at its own clustermesh-apiserver (clustermesh enable ... --endpoint, or --destination-endpoint)", to.info.Name),
				"endpoint %s of cluster %s presents the certificate of %q", to.info.Endpoint, to.info.Name, strings.TrimSuffix(cn, ServerNameSuffix)))
			continue
		}
		if p, ok := checkStore(ctx, from, to, creds); !ok {
			ps = append(ps, p)
		}
	}
	return ps
}

// checkStore reads the destination's store as from's agents will: a read
// under the key prefix must be allowed, and the cluster config the
// apiserver exported (if it did yet) must agree with what enable recorded.
func checkStore(ctx context.Context, from, to *member, creds Credentials) (Problem, bool) {
	cli, err := openStore(ctx, to.info.Endpoint, creds)
	if err != nil {
		return problem(ErrUnreachable, "check the store's TLS setup: clustermesh status "+to.c.ctxFlag(),
			"cluster %s cannot open the store of %s at %s: %v", from.info.Name, to.info.Name, to.info.Endpoint, err), false
	}
	defer cli.Close()
	// The same read and checks the agents apply before trusting the store.
	got, _, err := cli.ClusterConfig(ctx, to.info.Name)
	switch {
	case errors.Is(err, kvstore.ErrNoClusterConfig):
		return Problem{}, true // not exported yet; agents wait for it
	case errors.Is(err, kvstore.ErrClusterMismatch):
		return problem(ErrWrongCluster, "check the version and log of "+to.info.Name+"'s clustermesh-apiserver",
			"the cluster config in %s's store is refused: %v", to.info.Name, err), false
	case err != nil:
		return problem(ErrUnreachable,
			fmt.Sprintf("check that %s's store grants the %q user read access (clustermesh status %s)", to.info.Name, UserRemote, to.c.ctxFlag()),
			"cluster %s cannot read the store of %s at %s as %q: %v", from.info.Name, to.info.Name, to.info.Endpoint, UserRemote, err), false
	}
	if got.ID != to.info.ID {
		return problem(ErrWrongCluster,
			fmt.Sprintf("the clustermesh-apiserver of %s runs with --cluster-id %d while its ConfigMap says %d; re-run clustermesh enable %s --cluster-name %s --cluster-id %d and restart the apiserver",
				to.info.Name, got.ID, to.info.ID, to.c.ctxFlag(), to.info.Name, to.info.ID),
			"the store of %s at %s says cluster ID %d, enable recorded %d", to.info.Name, to.info.Endpoint, got.ID, to.info.ID), false
	}
	return Problem{}, true
}

// grantPeer gives `from`'s agents their own read-only user on `to`'s store
// and returns the entry `to` is known by in `from`'s clusters Secret: it
// pins to's name, cluster ID and CA (the server must present a certificate
// of that CA naming <to>.clustermesh), and carries a client certificate
// issued by to's CA whose common name is from's peer user on to's store
// (kvstore.PeerUser). A certificate of from's own CA, or any other cluster's,
// therefore grants nothing on to's store: from's admin and agent
// certificates are refused there, and from's peer certificate reads only
// what to exports.
func grantPeer(ctx context.Context, from, to *member, offline map[string]*pki.CA) (Entry, error) {
	e := Entry{Name: to.info.Name, ID: to.info.ID, Endpoint: to.info.Endpoint, CA: to.ca.pem}
	if old, ok := peerCertValid(from, to, time.Now()); ok {
		// A second connect keeps the certificate agents already hold.
		e.Cert, e.Key = old.Cert, old.Key
	} else {
		ca := offline[to.c.Context]
		if ca == nil {
			var err error
			if ca, err = to.c.LoadCA(ctx); err != nil {
				return Entry{}, fmt.Errorf("cluster %s: issue the peer certificate of %s: %w (connect issues it from %s's CA)", to.info.Name, from.info.Name, err, to.info.Name)
			}
		}
		if !ca.Certificate().Equal(to.ca.cert) {
			return Entry{}, fmt.Errorf("context %s: %w: the given CA %q is not the cluster's", to.c.Context, ErrCAMismatch, ca.Certificate().Subject.CommonName)
		}
		cert, key, err := ca.Issue(pki.IssueOptions{CommonName: kvstore.PeerUser(from.info.Name), Client: true})
		if err != nil {
			return Entry{}, fmt.Errorf("cluster %s: issue the peer certificate of %s: %w", to.info.Name, from.info.Name, err)
		}
		e.Cert, e.Key = cert, key
	}
	cli, _, err := to.c.OpenStore(ctx, StoreOptions{Endpoint: to.info.Endpoint})
	if err != nil {
		return Entry{}, err
	}
	defer cli.Close()
	if err := cli.GrantPeer(ctx, to.info.Name, from.info.Name); err != nil {
		return Entry{}, fmt.Errorf("cluster %s: %w", to.info.Name, err)
	}
	return e, nil
}

// peerCertValid returns from's existing entry for `to` when it still pins
// to's CA and holds a certificate of that CA for from's peer user that is
// not about to expire.
func peerCertValid(from, to *member, now time.Time) (Entry, bool) {
	for _, e := range from.existing {
		if e.Name != to.info.Name || e.ID != to.info.ID || !bytes.Equal(e.CA, to.ca.pem) || len(e.Key) == 0 {
			continue
		}
		cert, err := pki.ParseCertificate(e.Cert)
		if err != nil || cert.Subject.CommonName != kvstore.PeerUser(from.info.Name) || cert.CheckSignatureFrom(to.ca.cert) != nil || now.Add(RenewBefore).After(cert.NotAfter) {
			continue
		}
		return e, true
	}
	return Entry{}, false
}

// Connect connects src with every destination (and nothing else: the
// destinations are not connected with each other). It checks every pair
// first and changes nothing when any check fails, returning a *CheckError.
func Connect(ctx context.Context, src *Cluster, dsts []*Cluster, opts ConnectOptions) error {
	log := logging.OrDiscard(opts.Log)
	if len(dsts) == 0 {
		return fmt.Errorf("%w: connect needs at least one destination context", ErrInvalidArgument)
	}
	a, err := loadMember(ctx, src, "")
	if err != nil {
		return err
	}
	var bs []*member
	for _, d := range dsts {
		if d.Context == src.Context {
			return fmt.Errorf("%w: context %s is both source and destination", ErrInvalidArgument, d.Context)
		}
		b, err := loadMember(ctx, d, opts.DestinationEndpoints[d.Context])
		if err != nil {
			return err
		}
		bs = append(bs, b)
	}
	w := StoreWait{For: opts.WaitFor, Progress: opts.Progress, Log: log}
	if err := w.until(ctx, "connect", "", func(ctx context.Context) []Problem {
		ps := checkAll(ctx, a, bs, opts.SkipReachability)
		if len(ps) > 0 && onlyUnreachable(ps) {
			// A store whose apiserver waits for its image does not start
			// by waiting (kind has no registry to pull ours from).
			for _, m := range append([]*member{a}, bs...) {
				ps = append(m.c.apiserverImageProblems(ctx, m.info.Name), ps...)
			}
		}
		return ps
	}); err != nil {
		return err
	}
	// Every peer certificate is issued and every peer user granted before
	// any clusters Secret changes, so a missing CA key changes no Secret.
	type write struct {
		from *member
		e    Entry
	}
	var writes [][]write
	for _, b := range bs {
		var w []write
		for _, pair := range [][2]*member{{a, b}, {b, a}} {
			from, to := pair[0], pair[1]
			e, err := grantPeer(ctx, from, to, opts.CAs)
			if err != nil {
				return err
			}
			w = append(w, write{from, e})
		}
		writes = append(writes, w)
	}
	for i, b := range bs {
		for _, w := range writes[i] {
			from, e := w.from, w.e
			if err := from.c.updateClusters(ctx, log, func(s *corev1.Secret) error { return e.put(s) }); err != nil {
				return err
			}
		}
		log.Info("connected", "cluster", a.info.Name, "peer", b.info.Name)
	}
	// Local agents follow their own store at the recorded endpoint, not at
	// an override given for reaching it from elsewhere.
	for _, m := range append([]*member{a}, bs...) {
		info, err := m.c.ReadInfo(ctx)
		if err != nil {
			return err
		}
		if err := m.c.writeOwnEntry(ctx, *info); err != nil && !errors.Is(err, ErrNotEnabled) {
			return err
		}
	}
	return nil
}

// checkAll runs every check of connecting a with each of bs.
func checkAll(ctx context.Context, a *member, bs []*member, skipDial bool) []Problem {
	var ps []Problem
	for i, b := range bs {
		ps = append(ps, checkPair(ctx, a, b, skipDial)...)
		// Destinations do not talk to each other, but they will share a's
		// view: names and IDs must still be unique among them.
		for _, b2 := range bs[i+1:] {
			if b.info.Name == b2.info.Name {
				ps = append(ps, problem(ErrNameCollision, "clusters must have unique names", "destinations %s and %s are both named %q", b.c.Context, b2.c.Context, b.info.Name))
			}
			if b.info.ID == b2.info.ID {
				ps = append(ps, problem(ErrIDCollision, "clusters must have unique cluster IDs; re-enable one of them with another --cluster-id", "destinations %s and %s both have cluster ID %d", b.info.Name, b2.info.Name, b.info.ID))
			}
		}
	}
	return ps
}

// DisconnectOptions configure disconnect.
type DisconnectOptions struct {
	// Clusters names peers to drop from src by cluster name, for peers whose
	// context is gone; only src's side is edited for them.
	Clusters []string
	Log      *slog.Logger
}

// Disconnect revokes the access of src and each destination to each
// other's stores and removes their entries from each other's clusters
// Secrets. Revocation is at once: the peer's etcd user and role are deleted
// (kvstore.RevokePeer), so its certificate is refused from its next request
// on, also on connections it holds; agents stop following the peer when
// their mount updates. A store that cannot be reached keeps the peer's user:
// the entries are still removed and the error names the store, so the
// command can be re-run. Disconnecting clusters that are not connected is a
// no-op.
func Disconnect(ctx context.Context, src *Cluster, dsts []*Cluster, opts DisconnectOptions) error {
	log := logging.OrDiscard(opts.Log)
	si, err := src.ReadInfo(ctx)
	if err != nil {
		return err
	}
	var revokeErrs []error
	drop := func(c *Cluster, name string) error {
		if err := c.revokePeer(ctx, name); err != nil {
			revokeErrs = append(revokeErrs, err)
		}
		return c.updateClusters(ctx, log, func(s *corev1.Secret) error {
			removeEntry(s, name)
			return nil
		})
	}
	for _, d := range dsts {
		di, err := d.ReadInfo(ctx)
		if err != nil {
			return err
		}
		if di.Name == si.Name {
			return fmt.Errorf("%w: contexts %s and %s are the same cluster %s", ErrInvalidArgument, src.Context, d.Context, si.Name)
		}
		if err := drop(src, di.Name); err != nil {
			return err
		}
		if err := drop(d, si.Name); err != nil {
			return err
		}
		log.Info("disconnected", "cluster", si.Name, "peer", di.Name)
	}
	for _, name := range opts.Clusters {
		if name == si.Name {
			return fmt.Errorf("%w: cluster %s cannot be disconnected from itself", ErrInvalidArgument, name)
		}
		if err := api.ValidateClusterName(name); err != nil {
			return err
		}
		if err := drop(src, name); err != nil {
			return err
		}
		log.Info("disconnected", "cluster", si.Name, "peer", name)
	}
	if len(revokeErrs) > 0 {
		return fmt.Errorf("disconnected, but the peer user was not removed from every store (re-run disconnect when the store answers): %w", errors.Join(revokeErrs...))
	}
	return nil
}

// revokePeer deletes peer's etcd user and role on the cluster's store.
func (c *Cluster) revokePeer(ctx context.Context, peer string) error {
	cli, info, err := c.OpenStore(ctx, StoreOptions{})
	if err != nil {
		return fmt.Errorf("revoke %s: %w", peer, err)
	}
	defer cli.Close()
	if err := cli.RevokePeer(ctx, peer); err != nil {
		return fmt.Errorf("context %s: cluster %s: %w", c.Context, info.Name, err)
	}
	return nil
}

// unusedID returns the lowest cluster ID used neither by a, b nor any
// cluster connected to them.
func unusedID(a, b *member) uint32 {
	used := map[uint32]bool{a.info.ID: true, b.info.ID: true}
	for _, m := range []*member{a, b} {
		for _, e := range m.existing {
			used[e.ID] = true
		}
	}
	for id := uint32(1); ; id++ {
		if !used[id] {
			return id
		}
	}
}

// trustAnchor is a cluster's CA certificate, without its key.
type trustAnchor struct {
	cert *x509.Certificate
	// pem is the trust bundle peers are given: the CA, and the previous CA
	// while a rotation is under way.
	pem []byte
}

// trustAnchor reads the cluster's CA certificate from its CA Secret or,
// when the CA key is kept offline (Secret deleted), from the server
// certificate Secret's ca.crt.
func (c *Cluster) trustAnchor(ctx context.Context) (trustAnchor, error) {
	if ca, previous, err := c.loadCAState(ctx); err == nil {
		// During a CA rotation peers trust both CAs.
		return trustAnchor{ca.Certificate(), bundleOf(ca.CertPEM(), previous)}, nil
	} else if !errors.Is(err, ErrNotEnabled) {
		return trustAnchor{}, err
	}
	server, err := c.credentials(ctx, SecretServer)
	if err != nil {
		return trustAnchor{}, err
	}
	cert, err := pki.ParseCertificate(server.CA)
	if err != nil {
		return trustAnchor{}, fmt.Errorf("context %s: secret %s/%s: %s: %w", c.Context, c.Namespace, SecretServer, KeyCACert, err)
	}
	return trustAnchor{cert, server.CA}, nil
}

package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/pki"
)

// RotateOptions configure certs rotate.
type RotateOptions struct {
	// CA signs the new certificates when the cluster's CA key is kept
	// offline; nil reads it from the CA Secret.
	CA  *pki.CA
	Log *slog.Logger
}

// RotateCerts re-issues every leaf certificate of the cluster (server, admin,
// remote, agent) from the same CA and rewrites the cluster's own entry in
// its clusters Secret to carry the new agent certificate.
//
// Nothing loses its connection: the CA does not change, so old and new
// certificates are valid side by side until the old ones expire. Established
// TLS sessions keep going; the apiserver's etcd and the agents present or
// accept the new files once the kubelet refreshes the Secret mounts, and
// every new handshake uses them. Peers need no change: their entries hold
// the CA (unchanged) and the peer certificates connect issued them from it,
// which stay valid.
func RotateCerts(ctx context.Context, c *Cluster, opts RotateOptions) error {
	log := logging.OrDiscard(opts.Log)
	info, err := c.ReadInfo(ctx)
	if err != nil {
		return err
	}
	ca := opts.CA
	if ca == nil {
		if ca, err = c.LoadCA(ctx); err != nil {
			return fmt.Errorf("%w (if the CA is kept offline, pass it: --ca-cert/--ca-key)", err)
		}
	} else if anchor, err := c.trustAnchor(ctx); err != nil {
		return err
	} else if !anchor.cert.Equal(ca.Certificate()) {
		return fmt.Errorf("context %s: %w: the given CA %q is not the cluster's; rotation keeps the CA", c.Context, ErrCAMismatch, ca.Certificate().Subject.CommonName)
	}
	svc, err := c.Kube.CoreV1().Services(c.Namespace).Get(ctx, ServiceName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("context %s: get service %s/%s: %w", c.Context, c.Namespace, ServiceName, err)
	}
	if err := c.issueLeaves(ctx, ca, info.Name, info.Endpoint, svc, true); err != nil {
		return err
	}
	log.Info("re-issued certificates", "context", c.Context, "cluster", info.Name)
	agent, err := c.credentials(ctx, SecretAgent)
	if err != nil {
		return err
	}
	return c.updateClusters(ctx, log, func(s *corev1.Secret) error {
		// Bad entries are left as they are (status names them). Peer
		// entries hold certificates issued by the peer's CA for this
		// cluster's user on the peer's store: this cluster cannot issue
		// them; connect (re-run) does.
		entries, _ := Entries(s)
		for _, e := range entries {
			if e.Name != info.Name {
				continue
			}
			e.CA, e.Cert, e.Key = agent.CA, agent.Cert, agent.Key
			if err := e.put(s); err != nil {
				return err
			}
		}
		return nil
	})
}

// CA rotation phases (RotateCAOptions.Phase).
const (
	// PhaseStart creates the new CA and re-issues every certificate from it,
	// trusted by both CAs.
	PhaseStart = "start"
	// PhaseFinish drops the previous CA from every trust bundle.
	PhaseFinish = "finish"
)

// DefaultRotationSettle is how long finish waits after start by default:
// the kubelet refreshes Secret mounts within its sync period (one minute)
// plus its cache's lifetime, and every process must hold the new files
// before the previous CA is dropped.
const DefaultRotationSettle = 2 * time.Minute

// RotateCAOptions configure RotateCA.
type RotateCAOptions struct {
	// Phase is PhaseStart or PhaseFinish.
	Phase string
	// Peers are the connected clusters; every one must be given, since
	// each holds certificates of this cluster's CA for its agents.
	Peers []*Cluster
	// Settle is the least time between start and finish; zero means
	// DefaultRotationSettle.
	Settle time.Duration
	// Now is the clock (tests); zero means time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// ErrRotation is wrapped by refusals of RotateCA.
var ErrRotation = errors.New("CA rotation")

// RotateCA replaces the cluster's CA in two phases, without any connection
// being lost, including those of connected peers' agents to this store:
//
//   - start creates a new CA, certifies it with the current one (a cross
//     certificate, appended to everything the new CA issues), re-issues every
//     certificate of the cluster and every peer certificate it issued (by
//     re-running connect with each peer), and makes every trust bundle hold
//     both CAs. Old and new certificates are accepted everywhere: the new
//     ones chain to the old CA through the cross certificate, and the store
//     trusts both CAs.
//   - finish, once every process holds the new files (after Settle), drops
//     the previous CA from every bundle. The store then refuses the old
//     certificates, on new requests and on watches already open, without a
//     restart (kvstore's server follows its CA file).
//
// Re-running a phase is safe. The CA key must be in the cluster (a CA kept
// offline is rotated with `enable --replace-ca`, which does lose
// connections).
func RotateCA(ctx context.Context, c *Cluster, opts RotateCAOptions) error {
	log := logging.OrDiscard(opts.Log)
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	info, err := c.ReadInfo(ctx)
	if err != nil {
		return err
	}
	if err := c.checkRotationPeers(ctx, info.Name, opts.Peers); err != nil {
		return err
	}
	cur, previous, err := c.loadCAState(ctx)
	if err != nil {
		return fmt.Errorf("%w (rotate-ca needs the CA key in the cluster)", err)
	}
	s, err := c.getSecret(ctx, SecretCA)
	if err != nil {
		return err
	}
	switch opts.Phase {
	case PhaseStart:
		if len(previous) == 0 {
			next, err := pki.NewCA("clustermesh-ca-"+now().UTC().Format("20060102T150405Z"), 0)
			if err != nil {
				return fmt.Errorf("context %s: %w", c.Context, err)
			}
			cross, err := cur.CrossSign(next)
			if err != nil {
				return fmt.Errorf("context %s: %w", c.Context, err)
			}
			data := map[string][]byte{
				KeyCACert: next.CertPEM(), KeyCAKey: next.KeyPEM(), KeyCAChain: cross,
				KeyCAPrevious: cur.CertPEM(), KeyCARotationStarted: []byte(now().UTC().Format(time.RFC3339)),
			}
			if err := c.applySecret(ctx, SecretCA, corev1.SecretTypeOpaque, data); err != nil {
				return err
			}
			log.Info("CA rotation started", "context", c.Context, "cluster", info.Name, "ca", next.Certificate().Subject.CommonName, "previous_ca", cur.Certificate().Subject.CommonName)
		}
	case PhaseFinish:
		if len(previous) == 0 {
			return fmt.Errorf("context %s: %w: no rotation under way (run certs rotate-ca --phase start first)", c.Context, ErrRotation)
		}
		started, err := time.Parse(time.RFC3339, string(s.Data[KeyCARotationStarted]))
		settle := opts.Settle
		if settle == 0 {
			settle = DefaultRotationSettle
		}
		if err == nil && now().Sub(started) < settle {
			return fmt.Errorf("context %s: %w: started %s ago; finish drops the previous CA, so every process must first hold the new certificates: wait %s (the kubelet's Secret refresh) and check clustermesh status",
				c.Context, ErrRotation, now().Sub(started).Round(time.Second), (settle - now().Sub(started)).Round(time.Second))
		}
		data := map[string][]byte{KeyCACert: cur.CertPEM(), KeyCAKey: cur.KeyPEM(), KeyCAChain: cur.Chain()}
		if err := c.applySecret(ctx, SecretCA, corev1.SecretTypeOpaque, data); err != nil {
			return err
		}
		log.Info("CA rotation finished: previous CA dropped", "context", c.Context, "cluster", info.Name, "ca", cur.Certificate().Subject.CommonName)
	default:
		return fmt.Errorf("%w: phase %q: want %s or %s", ErrInvalidArgument, opts.Phase, PhaseStart, PhaseFinish)
	}
	ca, err := c.LoadCA(ctx)
	if err != nil {
		return err
	}
	// Every leaf is re-issued from the new CA, with the trust bundle of the
	// phase.
	if err := RotateCerts(ctx, c, RotateOptions{CA: ca, Log: opts.Log}); err != nil {
		return err
	}
	if len(opts.Peers) == 0 {
		return nil
	}
	// connect re-issues the peer certificates of this cluster's CA that
	// peers hold, and hands them the new bundle.
	return Connect(ctx, c, opts.Peers, ConnectOptions{Log: opts.Log})
}

// checkRotationPeers refuses a rotation that would leave a connected peer
// behind: every cluster of the clusters Secret but this one must be given.
func (c *Cluster) checkRotationPeers(ctx context.Context, self string, peers []*Cluster) error {
	s, err := c.ClustersSecret(ctx)
	if err != nil {
		return err
	}
	entries, _ := Entries(s)
	given := map[string]bool{}
	for _, p := range peers {
		pi, err := p.ReadInfo(ctx)
		if err != nil {
			return err
		}
		given[pi.Name] = true
	}
	var missing []string
	for _, e := range entries {
		if e.Name != self && !given[e.Name] {
			missing = append(missing, e.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("context %s: %w: connected cluster(s) %s hold certificates of this cluster's CA; pass their contexts with --peer-context", c.Context, ErrRotation, strings.Join(missing, ", "))
	}
	return nil
}

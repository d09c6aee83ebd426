package mesh

import (
	"context"
	"fmt"
	"log/slog"

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
	return c.updateClusters(ctx, func(s *corev1.Secret) error {
		// Bad entries are left as they are (status names them). Peer
		// entries hold certificates issued by the peer's CA for this
		// cluster's user on the peer's store: this cluster cannot issue
		// them; connect (re-run) does.
		entries, _ := Entries(s)
		for _, e := range entries {
			if e.Name != info.Name {
				continue
			}
			e.Cert, e.Key = agent.Cert, agent.Key
			if err := e.put(s); err != nil {
				return err
			}
		}
		return nil
	})
}

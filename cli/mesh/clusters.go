package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
)

// Connection is the YAML connection file of one cluster, the format the
// kvstore package reads. Paths are relative to the file's directory.
type Connection = kvstore.ConnectionFile

// Suffixes of the certificate keys of a cluster's entry in the clusters
// Secret.
const (
	SuffixCA   = ".ca.crt"
	SuffixCert = ".client.crt"
	SuffixKey  = ".client.key"
)

// annotationIDPrefix prefixes the annotation on the clusters Secret recording
// each entry's cluster ID, so that connect can check ID uniqueness against
// clusters it has no context for.
const annotationIDPrefix = "clustermesh.io/id-"

// Entry is one cluster's connection in a clusters Secret.
type Entry struct {
	Name     string
	ID       uint32
	Endpoint string
	CA       []byte
	Cert     []byte
	Key      []byte
}

func (e Entry) put(s *corev1.Secret) error {
	conn := Connection{
		Endpoints:     []string{e.Endpoint},
		TrustedCAFile: e.Name + SuffixCA,
		CertFile:      e.Name + SuffixCert,
		KeyFile:       e.Name + SuffixKey,
		// The peer is pinned: its store must present its own server
		// certificate and its config must keep the ID it was connected
		// with.
		ClusterID:  e.ID,
		ServerName: e.Name + ServerNameSuffix,
	}
	y, err := yaml.Marshal(conn)
	if err != nil {
		return fmt.Errorf("cluster %s: encode connection: %w", e.Name, err)
	}
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	s.Data[e.Name] = y
	s.Data[e.Name+SuffixCA] = e.CA
	s.Data[e.Name+SuffixCert] = e.Cert
	s.Data[e.Name+SuffixKey] = e.Key
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[annotationIDPrefix+e.Name] = strconv.FormatUint(uint64(e.ID), 10)
	return nil
}

func removeEntry(s *corev1.Secret, name string) {
	for _, k := range []string{name, name + SuffixCA, name + SuffixCert, name + SuffixKey} {
		delete(s.Data, k)
	}
	delete(s.Annotations, annotationIDPrefix+name)
}

// Entries decodes every cluster entry of a clusters Secret, sorted by name.
// An entry that does not decode is left out and named in the returned error
// (wrapping ErrBadEntry); the others are still returned.
func Entries(s *corev1.Secret) ([]Entry, error) {
	var out []Entry
	var errs []error
	for k, v := range s.Data {
		if strings.Contains(k, ".") {
			continue
		}
		var conn Connection
		if err := yaml.UnmarshalStrict(v, &conn); err != nil {
			errs = append(errs, fmt.Errorf("%w: secret %s/%s: cluster %s: %w", ErrBadEntry, s.Namespace, s.Name, k, err))
			continue
		}
		e := Entry{Name: k, CA: s.Data[conn.TrustedCAFile], Cert: s.Data[conn.CertFile], Key: s.Data[conn.KeyFile]}
		if len(conn.Endpoints) > 0 {
			e.Endpoint = conn.Endpoints[0]
		}
		if e.Endpoint == "" || len(e.CA) == 0 || len(e.Cert) == 0 || len(e.Key) == 0 {
			errs = append(errs, fmt.Errorf("%w: secret %s/%s: cluster %s: needs an endpoint and the files %s, %s, %s in the Secret",
				ErrBadEntry, s.Namespace, s.Name, k, conn.TrustedCAFile, conn.CertFile, conn.KeyFile))
			continue
		}
		if id, err := strconv.ParseUint(s.Annotations[annotationIDPrefix+k], 10, 32); err == nil {
			e.ID = uint32(id)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errors.Join(errs...)
}

// ClustersSecret returns the cluster's clusters Secret, or an empty one if
// it does not exist yet.
func (c *Cluster) ClustersSecret(ctx context.Context) (*corev1.Secret, error) {
	s, err := c.getSecret(ctx, SecretClusters)
	if err != nil {
		return nil, err
	}
	if s == nil {
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretClusters, Namespace: c.Namespace}}
	}
	return s, nil
}

// updateClusters applies mutate to the clusters Secret with optimistic
// concurrency, creating the Secret if needed. Nothing is written when mutate
// leaves the Secret unchanged.
//
// After an update the mesh pods are touched (touchPods), so that their
// kubelets write the new Secret into their volumes at once; log (may be
// nil) says when that fails.
func (c *Cluster) updateClusters(ctx context.Context, log *slog.Logger, mutate func(*corev1.Secret) error) error {
	updated := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := c.ClustersSecret(ctx)
		if err != nil {
			return err
		}
		before := s.DeepCopy()
		if err := mutate(s); err != nil {
			return err
		}
		secrets := c.Kube.CoreV1().Secrets(c.Namespace)
		switch {
		case s.ResourceVersion == "":
			if s.Labels == nil {
				s.Labels = map[string]string{}
			}
			s.Labels["app.kubernetes.io/part-of"] = "clustermesh"
			s.Type = corev1.SecretTypeOpaque
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: FieldManager})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), s.Name, err)
			}
		case sameData(before, s):
			return nil
		default:
			_, err = secrets.Update(ctx, s, metav1.UpdateOptions{FieldManager: FieldManager})
			updated = err == nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("context %s: update secret %s/%s: %w", c.Context, c.Namespace, SecretClusters, err)
	}
	if updated {
		if err := c.touchPods(ctx, c.Namespace, meshPodsSelector, touchedClustersKey, time.Now(), log); err != nil {
			logging.OrDiscard(log).Warn("the mesh pods see the change at their kubelet's next periodic sync (up to a minute or more)", "context", c.Context, "error", err)
		}
	}
	return nil
}

func sameData(a, b *corev1.Secret) bool {
	if len(a.Data) != len(b.Data) || len(a.Annotations) != len(b.Annotations) {
		return false
	}
	for k, v := range a.Data {
		if w, ok := b.Data[k]; !ok || string(v) != string(w) {
			return false
		}
	}
	for k, v := range a.Annotations {
		if w, ok := b.Annotations[k]; !ok || v != w {
			return false
		}
	}
	return true
}

// WriteClustersDir writes the cluster's clusters Secret into dir as the
// kubelet mounts it, one file per key: the agent's --clusters-dir. Files of
// entries no longer in the Secret are removed. It is the hook test harnesses
// use to run agents outside Kubernetes.
func (c *Cluster) WriteClustersDir(ctx context.Context, dir string) error {
	s, err := c.ClustersSecret(ctx)
	if err != nil {
		return err
	}
	return writeSecretDir(s, dir)
}

// WriteSecretDir writes one Secret of the cluster (e.g. SecretServer for the
// apiserver's etcd, SecretAdmin for its writer) into dir, one file per key.
func (c *Cluster) WriteSecretDir(ctx context.Context, name, dir string) error {
	s, err := c.getSecret(ctx, name)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("context %s: %w: secret %s/%s not found", c.Context, ErrNotEnabled, c.Namespace, name)
	}
	return writeSecretDir(s, dir)
}

// writeSecretDir writes a Secret into dir the way the kubelet's atomic
// writer does, so that a reader never sees a mix of old and new files (a new
// certificate with the old key): the files live in a fresh hidden directory,
// "..data" is a symlink to it swapped by rename, and each key is a symlink
// through "..data". Nothing is written when the content is unchanged.
func writeSecretDir(s *corev1.Secret, dir string) error {
	fail := func(err error) error { return fmt.Errorf("secret %s: write %s: %w", s.Name, dir, err) }
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	dataLink := filepath.Join(dir, "..data")
	if secretDirCurrent(s, dataLink) {
		return nil
	}
	gen, err := os.MkdirTemp(dir, "..gen-")
	if err != nil {
		return fail(err)
	}
	for k, v := range s.Data {
		if err := os.WriteFile(filepath.Join(gen, k), v, 0o600); err != nil {
			return fail(err)
		}
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(gen), tmpLink); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return fail(err)
	}
	for k := range s.Data {
		p := filepath.Join(dir, k)
		if target, err := os.Readlink(p); err == nil && target == filepath.Join("..data", k) {
			continue
		}
		tmp := filepath.Join(dir, "..link_tmp")
		_ = os.Remove(tmp)
		if err := os.Symlink(filepath.Join("..data", k), tmp); err != nil {
			return fail(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return fail(err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fail(err)
	}
	for _, e := range ents {
		name := e.Name()
		_, isKey := s.Data[name]
		switch {
		case name == "..data" || isKey || name == filepath.Base(gen):
		case strings.HasPrefix(name, "..gen-"):
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return fail(err)
			}
		case !strings.HasPrefix(name, ".."):
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return fail(err)
			}
		}
	}
	return nil
}

// secretDirCurrent tells whether the directory dataLink points to holds
// exactly the Secret's data.
func secretDirCurrent(s *corev1.Secret, dataLink string) bool {
	ents, err := os.ReadDir(dataLink)
	if err != nil || len(ents) != len(s.Data) {
		return false
	}
	for k, v := range s.Data {
		b, err := os.ReadFile(filepath.Join(dataLink, k))
		if err != nil || string(b) != string(v) {
			return false
		}
	}
	return true
}

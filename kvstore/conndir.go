package kvstore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/clustermesh/clustermesh/api"
)

// Connection is one cluster's connection file as read from a connection
// directory.
type Connection struct {
	// Config is the loaded file; when Err is set it may be incomplete.
	Config Config
	Err    error
	// Digest covers the file and the certificate files it names, so that a
	// rotated certificate changes it and its followers reconnect.
	Digest string
}

// IsConnectionFile reports whether a directory entry name is a cluster
// connection file: names containing a '.' are certificates and keys (and
// Kubernetes' ..data links of a Secret mount), not clusters.
func IsConnectionFile(name string) bool {
	return name != "" && !strings.Contains(name, ".")
}

// ReadConnectionDir reads every connection file of dir (one per cluster,
// named for the cluster: the clusters Secret as mounted for the agents, the
// apiserver's reflector and its mesh cache), keyed by cluster name. A file
// that cannot be read or loaded, or whose name is not a cluster name, is
// returned with Err set; the others are unaffected. An error is returned
// only when the directory itself cannot be read (a Secret volume being
// swapped): callers then keep what they follow.
func ReadConnectionDir(dir string) (map[string]Connection, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]Connection{}
	for _, e := range entries {
		name := e.Name()
		if !IsConnectionFile(name) {
			continue
		}
		path := filepath.Join(dir, name)
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		out[name] = readConnection(path, name)
	}
	return out, nil
}

func readConnection(path, name string) Connection {
	h := sha256.New()
	raw, err := os.ReadFile(path)
	if err != nil {
		return Connection{Err: fmt.Errorf("%w: cluster %s: %w", ErrConfig, name, err)}
	}
	h.Write(raw)
	if err := api.ValidateClusterName(name); err != nil {
		return Connection{Digest: hex.EncodeToString(h.Sum(nil)),
			Err: fmt.Errorf("%w: connection file %s: the file name must be the cluster name: %w", ErrConfig, path, err)}
	}
	cfg, err := LoadConfig(path)
	for _, f := range []string{cfg.CAFile, cfg.CertFile, cfg.KeyFile} {
		if b, rerr := os.ReadFile(f); rerr == nil {
			h.Write(b)
		}
	}
	c := Connection{Config: cfg, Digest: hex.EncodeToString(h.Sum(nil))}
	if err != nil {
		c.Err = fmt.Errorf("cluster %s: %w", name, err)
	}
	return c
}

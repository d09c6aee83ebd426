package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/route"
)

// CleanupConfig says where the agents of a node attached, pinned and
// routed: what `clustermesh-agent cleanup` removes when the node leaves the
// mesh (`clustermesh disable`).
type CleanupConfig struct {
	// CgroupPath and PinDir are the agent's --bpf-cgroup and --bpf-pin-dir.
	CgroupPath, PinDir string
	// Handle is the netlink socket of the node's network namespace; nil
	// opens one in the calling thread's.
	Handle *netlink.Handle
	// StoreDir, if set, is the directory of a node-local store
	// (clustermesh-apiserver's data with enable --store-storage
	// node-local): removed with its contents, and its parent when empty.
	// Its apiserver must be gone.
	StoreDir string
}

// Cleanup removes every trace the agent leaves on a node once it stopped:
// its eBPF programs (detached from the cgroup), the pinned links and maps
// with their directory, and every route of the project's protocols (static
// and BGP) in every routing table. The agent must not run any more: one
// that runs re-attaches and re-routes. It returns a line per object removed
// and goes on after an error, returning them all joined; running it again
// removes nothing.
func Cleanup(cfg CleanupConfig) ([]string, error) {
	var (
		out  []string
		errs []error
	)
	removed, err := bpf.Purge(cfg.CgroupPath, cfg.PinDir)
	for _, l := range removed {
		out = append(out, "removed "+l.String())
	}
	if err != nil {
		errs = append(errs, err)
	}
	routes, err := route.FlushOwned(cfg.Handle, route.Protocols()...)
	for _, r := range routes {
		out = append(out, "removed route "+route.Describe(r))
	}
	if err != nil {
		errs = append(errs, err)
	}
	if cfg.StoreDir != "" {
		if _, err := os.Stat(cfg.StoreDir); err == nil {
			if err := os.RemoveAll(cfg.StoreDir); err != nil {
				errs = append(errs, fmt.Errorf("store data %s: %w", cfg.StoreDir, err))
			} else {
				out = append(out, "removed store data "+cfg.StoreDir)
				_ = os.Remove(filepath.Dir(cfg.StoreDir)) // only if empty
			}
		}
	}
	return out, errors.Join(errs...)
}

// Remaining lists what of the agent is left on the node: a line per pin,
// attached program and route; none means the node is clean.
func Remaining(cfg CleanupConfig) ([]string, error) {
	var out []string
	left, err := bpf.Leftovers(cfg.CgroupPath, cfg.PinDir)
	if err != nil {
		return nil, err
	}
	for _, l := range left {
		out = append(out, l.String())
	}
	routes, err := route.Owned(cfg.Handle, route.Protocols()...)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	for _, r := range routes {
		out = append(out, "route "+route.Describe(r))
	}
	if cfg.StoreDir != "" {
		if _, err := os.Stat(cfg.StoreDir); err == nil {
			out = append(out, "store data "+cfg.StoreDir)
		}
	}
	return out, nil
}

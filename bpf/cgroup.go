package bpf

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Cgroup2 returns the cgroup v2 directory to attach to for path: path itself
// when it is on a cgroup v2 filesystem, else its "unified" subdirectory when
// that is (the hybrid layout: v1 controllers at /sys/fs/cgroup, cgroup2 at
// /sys/fs/cgroup/unified, as on hosts whose container runtime uses cgroup
// v1, and inside kind nodes on such hosts). A manifest can then name
// /sys/fs/cgroup whatever the host's layout. Anything else is
// ErrNotCgroup2.
func Cgroup2(path string) (string, error) {
	for _, p := range []string{path, filepath.Join(path, "unified")} {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", fmt.Errorf("bpf: cgroup %s: %w (nor is %s)", path, ErrNotCgroup2, filepath.Join(path, "unified"))
}

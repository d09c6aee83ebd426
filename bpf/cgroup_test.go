package bpf

import (
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCgroup2(t *testing.T) {
	// Find this host's cgroup v2 mount: /sys/fs/cgroup (unified layout) or
	// /sys/fs/cgroup/unified (hybrid).
	var mount string
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			mount = p
			break
		}
	}
	if mount == "" {
		t.Skip("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	}
	for _, tc := range []struct {
		name, path, want string
		err              error
	}{
		{"the host's /sys/fs/cgroup resolves to its v2 mount", "/sys/fs/cgroup", mount, nil},
		{"a v2 directory is kept", mount, mount, nil},
		{"a plain directory is refused", t.TempDir(), "", ErrNotCgroup2},
		{"a missing directory is refused", filepath.Join(t.TempDir(), "nope"), "", ErrNotCgroup2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Cgroup2(tc.path)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("Cgroup2(%s) = %q, %v; want %q, %v", tc.path, got, err, tc.want, tc.err)
			}
		})
	}
}

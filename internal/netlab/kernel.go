package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/poll"
)

// cgroupMounts are where cgroup v2 may be mounted: the hybrid layout of the
// build machines (v1 controllers plus v2 at unified/) and the pure v2 layout
// of current distributions.
var cgroupMounts = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}

// CgroupRoot returns the cgroup v2 mount point, or an error when there is
// none.
func CgroupRoot() (string, error) {
	for _, dir := range cgroupMounts {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 mount at %v", cgroupMounts)
}

// RemoveCgroupTree kills every process in the cgroup dir and below (through
// cgroup.kill), waits for them to be gone and removes the directories,
// deepest first. A missing dir is not an error.
func RemoveCgroupTree(ctx context.Context, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cgroup %s: kill: %w", dir, err)
	}
	err := poll.Until(ctx, func(context.Context) error {
		if CgroupPopulated(dir) {
			return fmt.Errorf("processes %v still running", CgroupPids(dir))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	var dirs []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cgroup %s: walk: %w", dir, err)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, d := range dirs {
		// A cgroup whose last process just exited may stay busy a moment.
		err := poll.Until(ctx, func(context.Context) error {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("cgroup %s: remove: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// CgroupPids lists the pids directly in dir and in every cgroup below it.
func CgroupPids(dir string) []string {
	var pids []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		for _, f := range bytes.Fields(b) {
			pids = append(pids, string(f))
		}
		return nil
	})
	return pids
}

// CgroupPopulated reports whether a process is left in dir or below it.
func CgroupPopulated(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0"
		}
	}
	return false
}

// BPFRoot is the system's bpffs mount point.
const BPFRoot = "/sys/fs/bpf"

// EnsureBPFFS mounts the bpf filesystem at dir when nothing of that type is
// mounted there, as systemd does at BPFRoot at boot on most distributions.
func EnsureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpffs: mount at %s: %w", dir, err)
	}
	return nil
}

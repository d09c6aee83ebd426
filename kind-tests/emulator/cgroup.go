package emulator

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
	"time"
)

// removeCgroupTree kills every process in the cgroup dir and below (through
// cgroup.kill), waits for them to be gone and removes the directories,
// deepest first. A missing dir is not an error.
func removeCgroupTree(ctx context.Context, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cgroup %s: kill: %w", dir, err)
	}
	for !cgroupEmpty(dir) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s: processes still running: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
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
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cgroup %s: remove: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupEmpty reports whether no process is left in dir or below it.
func cgroupEmpty(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v == "0"
		}
	}
	return true
}

// cgroupPids lists the pids directly in dir and in every cgroup below it.
func cgroupPids(dir string) []string {
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

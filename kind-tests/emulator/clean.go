package emulator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// Clean removes what runs left behind: every process in a run's cgroup or
// network namespace, the namespaces, the root namespace's links, the cgroups,
// the bpffs directories and the state directories. With prefix empty it
// cleans every run (names matching PrefixPattern); otherwise only that run.
// It returns what it removed, one line each, and every error met; it keeps
// going after an error.
func Clean(ctx context.Context, prefix string) ([]string, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if prefix != "" {
		if err := CheckPrefix(prefix); err != nil {
			return nil, err
		}
	}
	match := func(name string) (string, bool) {
		if len(name) < 7 {
			return "", false
		}
		p := name[:7]
		if prefix != "" && p != prefix {
			return "", false
		}
		return p, PrefixPattern.MatchString(p)
	}
	var done []string
	var errs []error
	note := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		done = append(done, what)
	}

	// Processes first, so nothing recreates what is removed next.
	nsInodes := map[uint64]string{}
	entries, _ := os.ReadDir("/run/netns")
	var namespaces []string
	for _, e := range entries {
		if _, ok := match(e.Name()); !ok {
			continue
		}
		namespaces = append(namespaces, e.Name())
		var st syscall.Stat_t
		if err := syscall.Stat(netlab.NetnsPath(e.Name()), &st); err == nil {
			nsInodes[st.Ino] = e.Name()
		}
	}
	procs, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
			continue
		}
		if ns, ok := nsInodes[st.Ino]; ok {
			note(fmt.Sprintf("killed process %d in netns %s", pid, ns), syscall.Kill(pid, syscall.SIGKILL))
		}
	}
	cgRoot, err := netlab.CgroupRoot()
	if err != nil {
		return nil, err
	}
	cgroups, _ := os.ReadDir(cgRoot)
	for _, e := range cgroups {
		if _, ok := match(e.Name()); !ok || !e.IsDir() {
			continue
		}
		dir := filepath.Join(cgRoot, e.Name())
		n := len(netlab.CgroupPids(dir))
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		note(fmt.Sprintf("removed cgroup %s (killed %d processes)", dir, n), netlab.RemoveCgroupTree(cctx, dir))
		cancel()
	}
	for _, ns := range namespaces {
		note("removed netns "+ns, netlab.DelNetns(ctx, ns))
	}
	links, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		name := l.Attrs().Name
		if _, ok := match(name); ok {
			note("removed link "+name, netlab.DelLink(ctx, name))
		}
	}
	for _, root := range []string{netlab.BPFRoot, os.TempDir()} {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if _, ok := match(e.Name()); ok && e.IsDir() {
				note("removed "+filepath.Join(root, e.Name()), os.RemoveAll(filepath.Join(root, e.Name())))
			}
		}
	}
	return done, errors.Join(errs...)
}

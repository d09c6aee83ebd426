package bpf

import (
	"errors"

	"github.com/cilium/ebpf"
)

var (
	// ErrMapFull is returned when an update needs more room than a map (or
	// an ID space sized from it) has left. Nothing of that update is applied.
	ErrMapFull = errors.New("bpf map full")
	// ErrInvalidService is returned for a service the datapath cannot
	// program: bad frontend, mixed address families, too many backends.
	ErrInvalidService = errors.New("invalid service")
	// ErrNotBPFFS is returned when the pin directory is not on a bpffs.
	ErrNotBPFFS = errors.New("pin directory is not on a bpf filesystem")
	// ErrNotCgroup2 means the cgroup path is not on a cgroup v2 filesystem
	// and has no cgroup v2 mount beneath it.
	ErrNotCgroup2 = errors.New("not a cgroup v2 directory")
	// ErrIncompatiblePin is returned when a pinned map differs from what
	// this build expects (another layout or size); remove the pins to start
	// from empty.
	ErrIncompatiblePin = errors.New("pinned object incompatible")
	// ErrNotSupported is returned when the kernel lacks something the
	// programs need (cgroup sock_addr hooks, bpf_loop: Linux 5.17 or newer,
	// BPF links on cgroups). It is cilium/ebpf's sentinel, so errors from
	// the library match it too; tests skip on it.
	ErrNotSupported = ebpf.ErrNotSupported
	// ErrClosed is returned by calls on a closed Datapath.
	ErrClosed = errors.New("datapath closed")
)

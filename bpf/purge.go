package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Leftover is one thing the datapath leaves on a node after its agent is
// gone: a pin (map or link) under the pin directory, or one of its programs
// attached to the cgroup.
type Leftover struct {
	// Kind is "link pin", "map pin" or "program".
	Kind string
	// Name is the pin's path, or the program's name.
	Name string
	// ProgramID and Attach are set for a program.
	ProgramID ebpf.ProgramID
	Attach    ebpf.AttachType
	// Cgroup is the cgroup v2 directory a program is attached to.
	Cgroup string
}

func (l Leftover) String() string {
	if l.Kind == "program" {
		return fmt.Sprintf("program %s (id %d, %s) attached to cgroup %s", l.Name, l.ProgramID, l.Attach, l.Cgroup)
	}
	return l.Kind + " " + l.Name
}

// pinNames returns the file names the datapath pins under its directory:
// one link per program, one file per map pinned by name.
func pinNames() (links, maps []string, err error) {
	spec, err := loadSocklb()
	if err != nil {
		return nil, nil, fmt.Errorf("bpf: load embedded object: %w", err)
	}
	for _, a := range attachments {
		links = append(links, filepath.Base(linkPinPath("", a.prog)))
	}
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			maps = append(maps, name)
		}
	}
	slices.Sort(maps)
	return links, maps, nil
}

// isOurs tells a program of this datapath by its kernel name (the program's
// function name, at most 15 characters: all of ours fit).
func isOurs(name string) bool {
	for _, a := range attachments {
		if a.prog == name {
			return true
		}
	}
	return false
}

// Leftovers lists what a datapath pinning in pinDir and attaching to
// cgroupPath left behind: its pins, and any of its programs attached to the
// cgroup (through a pinned link, a link some process holds, or a plain
// attachment). Empty means the node is clean. A missing pin directory is
// clean; a cgroup path that is not cgroup v2 is an error.
func Leftovers(cgroupPath, pinDir string) ([]Leftover, error) {
	out, err := pinLeftovers(pinDir)
	if err != nil {
		return nil, err
	}
	progs, err := attachedPrograms(cgroupPath)
	if err != nil {
		return out, err
	}
	return append(out, progs...), nil
}

func pinLeftovers(pinDir string) ([]Leftover, error) {
	links, maps, err := pinNames()
	if err != nil {
		return nil, err
	}
	// Pod interface links (see AttachIngress) are pinned per interface.
	tcx, err := filepath.Glob(filepath.Join(pinDir, tcxPinPrefix+"*"))
	if err != nil {
		return nil, err
	}
	for _, p := range tcx {
		links = append(links, filepath.Base(p))
	}
	var out []Leftover
	for _, group := range []struct {
		kind  string
		names []string
	}{{"link pin", links}, {"map pin", maps}} {
		for _, n := range group.names {
			p := filepath.Join(pinDir, n)
			if _, err := os.Lstat(p); err == nil {
				out = append(out, Leftover{Kind: group.kind, Name: p})
			} else if !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("bpf: pin %s: %w", p, err)
			}
		}
	}
	return out, nil
}

// attachedPrograms lists the programs of ours attached directly to the
// cgroup, by hook.
func attachedPrograms(cgroupPath string) ([]Leftover, error) {
	cg, err := Cgroup2(cgroupPath)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(cg)
	if err != nil {
		return nil, fmt.Errorf("bpf: cgroup %s: %w", cg, err)
	}
	defer f.Close()
	var out []Leftover
	for _, a := range attachments {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: a.attach})
		if err != nil {
			return nil, fmt.Errorf("bpf: cgroup %s: %s programs: %w", cg, a.attach, err)
		}
		for _, ap := range res.Programs {
			name, err := programName(ap.ID)
			if errors.Is(err, os.ErrNotExist) {
				continue // detached meanwhile
			}
			if err != nil {
				return nil, fmt.Errorf("bpf: cgroup %s: %s program %d: %w", cg, a.attach, ap.ID, err)
			}
			if isOurs(name) {
				out = append(out, Leftover{Kind: "program", Name: name, ProgramID: ap.ID, Attach: a.attach, Cgroup: cg})
			}
		}
	}
	return out, nil
}

func programName(id ebpf.ProgramID) (string, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", err
	}
	return info.Name, nil
}

// Purge removes everything a datapath pinning in pinDir and attaching to
// cgroupPath leaves on a node, for a node that leaves the mesh: it detaches
// the programs of the pinned links, unpins the links and maps, detaches any
// of its programs still attached to the cgroup (a link held by a process,
// which must not be an agent still running, or a plain attachment), and
// removes pinDir when that leaves it empty. Sockets are no longer balanced
// from then on. It returns what it removed; running it again removes
// nothing. On error it goes on with the rest and returns what it did
// remove with the joined errors.
func Purge(cgroupPath, pinDir string) ([]Leftover, error) {
	var (
		removed []Leftover
		errs    []error
	)
	pins, err := pinLeftovers(pinDir)
	if err != nil {
		return nil, err
	}
	for _, l := range pins {
		if l.Kind == "link pin" {
			if err := detachPinnedLink(l.Name); err != nil {
				errs = append(errs, err)
				continue
			}
		} else if err := os.Remove(l.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("bpf: unpin %s: %w", l.Name, err))
			continue
		}
		removed = append(removed, l)
	}
	progs, err := attachedPrograms(cgroupPath)
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range progs {
		if err := detachProgram(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	// Only an empty directory goes: it may be a bpffs mount point or hold
	// pins of others.
	if err := os.Remove(pinDir); err == nil {
		removed = append(removed, Leftover{Kind: "pin directory", Name: pinDir})
	}
	return removed, errors.Join(errs...)
}

// detachPinnedLink detaches the link pinned at path (even when a process
// still holds it) and removes the pin.
func detachPinnedLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		// Not a link (any more): the pin alone goes.
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("bpf: link pin %s: %w (remove: %w)", path, err, rerr)
		}
		return nil
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, ErrNotSupported) {
		return fmt.Errorf("bpf: detach link %s: %w", path, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("bpf: unpin link %s: %w", path, err)
	}
	return nil
}

// detachProgram detaches a program of ours from the cgroup: through its
// link when it was attached with one, else with BPF_PROG_DETACH.
func detachProgram(p Leftover) error {
	var st unix.Stat_t
	if err := unix.Stat(p.Cgroup, &st); err != nil {
		return fmt.Errorf("bpf: cgroup %s: %w", p.Cgroup, err)
	}
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Program != p.ProgramID {
			continue
		}
		if cg := info.Cgroup(); cg == nil || cg.CgroupId != st.Ino {
			continue
		}
		if err := it.Link.Detach(); err != nil {
			return fmt.Errorf("bpf: detach %s: link %d: %w", p, info.ID, err)
		}
		return nil
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("bpf: detach %s: %w", p, err)
	}
	prog, err := ebpf.NewProgramFromID(p.ProgramID)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bpf: detach %s: %w", p, err)
	}
	defer prog.Close()
	f, err := os.Open(p.Cgroup)
	if err != nil {
		return fmt.Errorf("bpf: detach %s: %w", p, err)
	}
	defer f.Close()
	err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: int(f.Fd()), Program: prog, Attach: p.Attach})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bpf: detach %s: %w", p, err)
	}
	return nil
}

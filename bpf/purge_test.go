package bpf

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

func kinds(ls []Leftover) map[string]int {
	out := map[string]int{}
	for _, l := range ls {
		out[l.Kind]++
	}
	return out
}

// TestPurge leaves a node as an agent does (pins of a stopped agent, plus
// links a running process still holds on the same cgroup) and checks Purge
// detaches every program of ours, removes our pins and the emptied pin
// directory, leaves a foreign program attached, and finds nothing the
// second time.
func TestPurge(t *testing.T) {
	_, bpffs, cg := newLab(t)
	pin, held := filepath.Join(bpffs, "node"), filepath.Join(bpffs, "held")
	ctx := context.Background()

	stopped := openTest(t, testConfig(cg, pin))
	if err := stopped.Close(); err != nil { // pins stay, as after an agent exits
		t.Fatal(err)
	}
	// Another process's datapath on the same cgroup, still open: its links
	// are held by file descriptors and pinned elsewhere.
	running, err := Open(ctx, testConfig(cg, held))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = running.Remove() })
	// A program of somebody else on the same hook.
	foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "foreign4", Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	fl, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInet4Connect, Program: foreign})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()

	_, mapPins, err := pinNames()
	if err != nil {
		t.Fatal(err)
	}
	before, err := Leftovers(cg, pin)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"link pin": len(attachments), "map pin": len(mapPins), "program": 2 * len(attachments)}
	if got := kinds(before); !maps.Equal(got, want) {
		t.Fatalf("leftovers before purge: %v, want %v: %v", got, want, before)
	}

	removed, err := Purge(cg, pin)
	if err != nil {
		t.Fatal(err)
	}
	// The stopped agent's programs went with their pinned links; the held
	// ones are detached by link ID.
	want = map[string]int{"link pin": len(attachments), "map pin": len(mapPins), "program": len(attachments), "pin directory": 1}
	if got := kinds(removed); !maps.Equal(got, want) {
		t.Errorf("removed %v, want %v: %v", got, want, removed)
	}
	after, err := Leftovers(cg, pin)
	if err != nil || len(after) != 0 {
		t.Errorf("leftovers after purge: %v, %v; want none", after, err)
	}
	f, err := filepath.Glob(filepath.Join(pin, "*"))
	if err != nil || len(f) != 0 {
		t.Errorf("pin directory still holds %v (%v)", f, err)
	}
	res, err := attachedIDs(cg, ebpf.AttachCGroupInet4Connect)
	if err != nil {
		t.Fatal(err)
	}
	info, err := foreign.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	if !slices.Equal(res, []ebpf.ProgramID{id}) {
		t.Errorf("connect4 hook holds programs %v, want only the foreign one %d", res, id)
	}

	again, err := Purge(cg, pin)
	if err != nil || len(again) != 0 {
		t.Errorf("second purge removed %v (%v), want nothing", again, err)
	}
}

func attachedIDs(cg string, at ebpf.AttachType) ([]ebpf.ProgramID, error) {
	f, err := os.Open(cg)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		return nil, err
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids, nil
}

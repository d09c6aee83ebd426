package bpf

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Dump is the content of the pinned maps in a reader's terms.
type Dump struct {
	Services []DumpService `json:"services"`
	// Nodes marked down, whatever backends they carry.
	DownNodes []loadbalancer.NodeRef `json:"downNodes"`
	// Stats are the kernel-side counters summed over CPUs.
	Stats map[string]uint64 `json:"stats"`
	// Capacity gives, per map, the entries it holds and its size (fixed
	// when the maps were first created; see the --bpf-max-* flags).
	Capacity map[string][2]int `json:"capacity"`
}

// DumpService is one frontend and its backends in slot order.
type DumpService struct {
	Frontend  string        `json:"frontend"`
	Set       uint32        `json:"set"`
	Rev       uint32        `json:"rev"`
	Preferred []DumpBackend `json:"preferred"`
	Fallback  []DumpBackend `json:"fallback"`
}

// DumpBackend is one slot's backend. Missing is set if the slot or the
// backend is absent, which a consistent map set never shows.
type DumpBackend struct {
	ID      uint32               `json:"id"`
	Addr    netip.AddrPort       `json:"addr"`
	Node    loadbalancer.NodeRef `json:"node"`
	Healthy bool                 `json:"healthy"`
	Missing bool                 `json:"missing,omitempty"`
}

// ReadDump reads the maps pinned in pinDir (read-only; an agent may be
// writing them meanwhile, so a dump taken during an update can mix states).
func ReadDump(pinDir string) (*Dump, error) {
	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("map %s in %s: %w", name, pinDir, err)
		}
		return m, nil
	}
	maps := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for _, name := range []string{mapServices, mapSlots, mapBackends, mapNodes, mapStats} {
		m, err := open(name)
		if err != nil {
			return nil, err
		}
		maps[name] = m
	}

	nodes := map[uint32]nodeValue{}
	var (
		nid uint32
		nv  nodeValue
	)
	it := maps[mapNodes].Iterate()
	for it.Next(&nid, &nv) {
		nodes[nid] = nv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: %w", mapNodes, err)
	}
	backends := map[uint32]backendValue{}
	var (
		bid uint32
		bv  backendValue
	)
	it = maps[mapBackends].Iterate()
	for it.Next(&bid, &bv) {
		backends[bid] = bv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: %w", mapBackends, err)
	}
	slots := map[slotKey]slotValue{}
	var (
		sk slotKey
		sv slotValue
	)
	it = maps[mapSlots].Iterate()
	for it.Next(&sk, &sv) {
		slots[sk] = sv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map %s: %w", mapSlots, err)
	}

	d := &Dump{Stats: map[string]uint64{}, Capacity: map[string][2]int{
		mapServices: {0, int(maps[mapServices].MaxEntries())},
		mapSlots:    {len(slots), int(maps[mapSlots].MaxEntries())},
		mapBackends: {len(backends), int(maps[mapBackends].MaxEntries())},
		mapNodes:    {len(nodes), int(maps[mapNodes].MaxEntries())},
	}}
	_, entries, err := readAll[uint32, svcEntry](maps[mapServices])
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", mapServices, err)
	}
	keys, vals, err := newSvcTable(entries).adopt()
	if err != nil {
		return nil, err
	}
	for i, key := range keys {
		val := vals[i]
		s := DumpService{Frontend: key.frontend().String(), Set: val.Set, Rev: val.Rev}
		for i := 0; i < int(val.Preferred)+int(val.Fallback); i++ {
			b := DumpBackend{Missing: true}
			if id := slotID(&val, slots, i); id != 0 {
				b.ID = id
				if be, ok := backends[id]; ok {
					b.Missing = false
					b.Addr = toAddrPort(be.Addr, be.Port)
					n, known := nodes[be.NodeID]
					b.Node = n.ref()
					b.Healthy = !known || n.Flags&nodeFlagDown == 0
				}
			}
			if i < int(val.Preferred) {
				s.Preferred = append(s.Preferred, b)
			} else {
				s.Fallback = append(s.Fallback, b)
			}
		}
		d.Services = append(d.Services, s)
	}
	slices.SortFunc(d.Services, func(a, b DumpService) int { return cmp.Compare(a.Frontend, b.Frontend) })
	for _, n := range nodes {
		if n.Flags&nodeFlagDown != 0 {
			d.DownNodes = append(d.DownNodes, n.ref())
		}
	}
	slices.SortFunc(d.DownNodes, func(a, b loadbalancer.NodeRef) int { return cmp.Compare(a.String(), b.String()) })

	var perCPU []uint64
	for i, name := range statNames {
		if err := maps[mapStats].Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("map %s: %w", mapStats, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		d.Stats[name] = sum
	}
	c := d.Capacity[mapServices]
	d.Capacity[mapServices] = [2]int{len(d.Services), c[1]}
	return d, nil
}

// WriteText renders the dump as a table: one line per frontend, then one
// line per backend slot, columns aligned over the whole table.
func (d *Dump) WriteText(w io.Writer) error {
	type line struct {
		summary string   // frontend line
		cells   []string // backend line
	}
	header := []string{"FRONTEND / SET", "BACKEND", "CLUSTER", "NODE", "HEALTH"}
	widths := make([]int, len(header))
	grow := func(cells []string) {
		for i, c := range cells {
			widths[i] = max(widths[i], len(c))
		}
	}
	grow(header)
	var lines []line
	for _, s := range d.Services {
		lines = append(lines, line{summary: fmt.Sprintf("%s  %d preferred, %d fallback (rev %d, slot set %d)",
			s.Frontend, len(s.Preferred), len(s.Fallback), s.Rev, s.Set)})
		for _, set := range []struct {
			name string
			bs   []DumpBackend
		}{{"preferred", s.Preferred}, {"fallback", s.Fallback}} {
			for _, b := range set.bs {
				cells := []string{"  " + set.name, fmt.Sprintf("(missing backend %d)", b.ID), "", "", ""}
				if !b.Missing {
					health := "healthy"
					if !b.Healthy {
						health = "DOWN"
					}
					cells = []string{"  " + set.name, b.Addr.String(), fmt.Sprint(b.Node.ClusterID), b.Node.Name, health}
				}
				grow(cells)
				lines = append(lines, line{cells: cells})
			}
		}
	}
	var sb strings.Builder
	row := func(cells []string) {
		for i, c := range cells {
			if i == len(cells)-1 {
				sb.WriteString(c)
				break
			}
			fmt.Fprintf(&sb, "%-*s  ", widths[i], c)
		}
		sb.WriteString("\n")
	}
	row(header)
	for _, l := range lines {
		if l.cells == nil {
			sb.WriteString(l.summary + "\n")
			continue
		}
		row(l.cells)
	}
	if len(d.DownNodes) > 0 {
		sb.WriteString("\nnodes down:")
		for _, n := range d.DownNodes {
			sb.WriteString(" " + n.String())
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(&sb, "\n%d services; kernel counters: translated=%d fallback=%d no_backend=%d udp_revnat=%d\n",
		len(d.Services), d.Stats["translated"], d.Stats["fallback"], d.Stats["no_backend"], d.Stats["revnat"])
	sb.WriteString("capacity (entries / size):")
	for _, name := range []string{mapServices, mapBackends, mapSlots, mapNodes} {
		if c, ok := d.Capacity[name]; ok {
			fmt.Fprintf(&sb, " %s %d/%d", name, c[0], c[1])
		}
	}
	sb.WriteString("\n")
	_, err := io.WriteString(w, sb.String())
	return err
}

// DebugOption changes a default of NewDebugCommand.
type DebugOption func(*debugOptions)

type debugOptions struct{ pinDir string }

// WithPinDir sets the default of the --bpffs flag.
func WithPinDir(dir string) DebugOption { return func(o *debugOptions) { o.pinDir = dir } }

// NewDebugCommand returns the "bpf" command with its "services" subcommand,
// which prints the pinned maps found under --bpffs. It needs no running
// agent, only read access to the pins (usually root).
func NewDebugCommand(opts ...DebugOption) *cobra.Command {
	o := debugOptions{pinDir: DefaultConfig().PinDir}
	for _, opt := range opts {
		opt(&o)
	}
	root := &cobra.Command{
		Use:   "bpf",
		Short: "Inspect the eBPF datapath",
	}
	root.PersistentFlags().StringVar(&o.pinDir, "bpffs", o.pinDir, "directory of the pinned maps on the bpffs")
	var output string
	services := &cobra.Command{
		Use:   "services",
		Short: "Print global services as programmed in the kernel: frontend, preferred and fallback backends, health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := ReadDump(o.pinDir)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("no datapath pinned in %s (is the agent running, and --bpffs right?): %w", o.pinDir, err)
				}
				return err
			}
			switch output {
			case "text":
				return d.WriteText(cmd.OutOrStdout())
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			}
			return fmt.Errorf("--output %q: want text or json", output)
		},
	}
	services.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	root.AddCommand(services)
	return root
}

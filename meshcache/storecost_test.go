package meshcache_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"
)

// The simulated stores are embedded etcd servers in the benchmark's own
// process, so their CPU cannot be read from /proc. It is measured with the
// CPU profiler instead: a sample is the stores' when a frame of its stack
// is the etcd server's (its gRPC service, MVCC, raft, bbolt) or gRPC's
// server side. What that leaves out (the runtime's background GC workers,
// the relays in front of the stores) is reported in the process total.

// storeFrames are the function name prefixes that make a CPU sample the
// stores'.
var storeFrames = []string{
	"go.etcd.io/etcd/server/",
	"go.etcd.io/raft/",
	"go.etcd.io/bbolt",
	"google.golang.org/grpc/internal/transport.(*http2Server)",
	"google.golang.org/grpc/internal/transport.NewServerTransport",
	"google.golang.org/grpc.(*Server)",
	"google.golang.org/grpc.(*serverStream)",
}

// cpuPhase measures one phase of the benchmark: the stores' CPU (profiled)
// and the whole process's (rusage), and the stores' own counters (etcd's
// metrics, which every embedded server of the process adds to: they are
// mesh-wide totals).
type cpuPhase struct {
	buf     bytes.Buffer
	profile bool
	rusage  time.Duration
	etcd    etcdCounters
	err     error
}

// phaseCost is what a phase cost, mesh-wide.
type phaseCost struct {
	// StoreCPU is the CPU the stores spent (zero, with ProfileErr set, when
	// the profiler was already in use, e.g. under go test -cpuprofile).
	StoreCPU   time.Duration
	ProfileErr error
	// Profile is the phase's CPU profile (gzipped profile.proto), for
	// SCALE_PROFILE_DIR.
	Profile []byte
	// ProcessCPU is the whole benchmark process's: stores, caches, agents,
	// relays, GC.
	ProcessCPU time.Duration
	etcdCounters
}

func startPhase() *cpuPhase {
	p := &cpuPhase{rusage: processCPU(), etcd: readEtcdCounters()}
	if err := pprof.StartCPUProfile(&p.buf); err != nil {
		p.err = fmt.Errorf("store CPU not measured: %w", err)
	} else {
		p.profile = true
	}
	return p
}

func (p *cpuPhase) stop() phaseCost {
	c := phaseCost{ProfileErr: p.err}
	if p.profile {
		pprof.StopCPUProfile()
		c.Profile = p.buf.Bytes()
		c.StoreCPU, c.ProfileErr = storeCPU(c.Profile)
	}
	c.ProcessCPU = processCPU() - p.rusage
	c.etcdCounters = readEtcdCounters().sub(p.etcd)
	return c
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// etcdCounters are etcd's own counters, summed over every server in the
// process.
type etcdCounters struct {
	// Puts and Deletes are the keys written and deleted; PutBytes the
	// keys' and values' bytes put.
	Puts, Deletes, PutBytes float64
	// Events are the watch events sent to watchers; SentBytes the bytes
	// sent to gRPC clients (responses and watch events).
	Events, SentBytes float64
}

func (c etcdCounters) sub(o etcdCounters) etcdCounters {
	return etcdCounters{c.Puts - o.Puts, c.Deletes - o.Deletes, c.PutBytes - o.PutBytes, c.Events - o.Events, c.SentBytes - o.SentBytes}
}

func readEtcdCounters() etcdCounters {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return etcdCounters{}
	}
	var c etcdCounters
	for _, mf := range mfs {
		var dst *float64
		switch mf.GetName() {
		case "etcd_mvcc_put_total":
			dst = &c.Puts
		case "etcd_mvcc_delete_total":
			dst = &c.Deletes
		case "etcd_debugging_mvcc_total_put_size_in_bytes":
			dst = &c.PutBytes
		case "etcd_debugging_mvcc_events_total":
			dst = &c.Events
		case "etcd_network_client_grpc_sent_bytes_total":
			dst = &c.SentBytes
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			*dst += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return c
}

// storeCPU sums the CPU time of the samples of a CPU profile (gzipped
// profile.proto, as runtime/pprof writes it) that have a store frame. It
// reads the few fields it needs with protowire rather than pull in a
// profile library: Profile{2 sample, 4 location, 5 function, 6
// string_table}, Sample{1 location_id, 2 value}, Location{1 id, 4 line},
// Line{1 function_id}, Function{1 id, 2 name}.
func storeCPU(gz []byte) (time.Duration, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return 0, fmt.Errorf("cpu profile: %w", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return 0, fmt.Errorf("cpu profile: %w", err)
	}
	type sample struct {
		locs []uint64
		vals []int64
	}
	var (
		samples  []sample
		locFuncs = map[uint64][]uint64{}
		funcName = map[uint64]int64{}
		strs     []string
	)
	err = fields(raw, func(num protowire.Number, v []byte, _ uint64) error {
		switch num {
		case 2:
			var s sample
			err := fields(v, func(n protowire.Number, b []byte, x uint64) error {
				switch n {
				case 1:
					s.locs = appendVarints(s.locs, b, x)
				case 2:
					for _, u := range appendVarints(nil, b, x) {
						s.vals = append(s.vals, int64(u))
					}
				}
				return nil
			})
			samples = append(samples, s)
			return err
		case 4:
			var id uint64
			var fns []uint64
			err := fields(v, func(n protowire.Number, b []byte, x uint64) error {
				switch n {
				case 1:
					id = x
				case 4:
					return fields(b, func(n protowire.Number, _ []byte, x uint64) error {
						if n == 1 {
							fns = append(fns, x)
						}
						return nil
					})
				}
				return nil
			})
			locFuncs[id] = fns
			return err
		case 5:
			var id uint64
			var name int64
			err := fields(v, func(n protowire.Number, _ []byte, x uint64) error {
				switch n {
				case 1:
					id = x
				case 2:
					name = int64(x)
				}
				return nil
			})
			funcName[id] = name
			return err
		case 6:
			strs = append(strs, string(v))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cpu profile: %w", err)
	}
	isStore := func(fn uint64) bool {
		i := funcName[fn]
		if i < 0 || int(i) >= len(strs) {
			return false
		}
		for _, p := range storeFrames {
			if strings.HasPrefix(strs[i], p) {
				return true
			}
		}
		return false
	}
	var ns int64
	for _, s := range samples {
		if len(s.vals) < 2 {
			continue
		}
	frames:
		for _, l := range s.locs {
			for _, fn := range locFuncs[l] {
				if isStore(fn) {
					ns += s.vals[1] // [samples, cpu nanoseconds]
					break frames
				}
			}
		}
	}
	return time.Duration(ns), nil
}

// fields calls fn for each field of a message: the bytes of a
// length-delimited field, or the value of a varint one.
func fields(b []byte, fn func(protowire.Number, []byte, uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var (
			v []byte
			x uint64
		)
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				b = b[n:]
				continue
			}
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, v, x); err != nil {
			return err
		}
	}
	return nil
}

// appendVarints appends a repeated varint field's values: packed (b) or
// one (x).
func appendVarints(dst []uint64, b []byte, x uint64) []uint64 {
	if b == nil {
		return append(dst, x)
	}
	for len(b) > 0 {
		u, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return dst
		}
		dst, b = append(dst, u), b[n:]
	}
	return dst
}

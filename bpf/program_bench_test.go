package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// BenchmarkProgram measures programming N services of 3 backends each into
// empty maps, one UpsertService per service against one UpsertServices
// (batch map writes; best and median of bulkRounds loads), and changing one
// service afterwards: the median of
// changeSamples services changed one after another, and the first of them
// alone (it pays one-off costs: cold caches after the load).
//
// Run: go test -run '^$' -bench BenchmarkProgram -benchtime 1x ./bpf/
// (BENCH_SIZES=1000,10000 to skip the 100k round).
func BenchmarkProgram(b *testing.B) {
	const (
		changeSamples = 21
		bulkRounds    = 5
	)
	sizes := benchSizes()
	_, pin, cg := newLab(b)
	ctx := context.Background()
	var table strings.Builder
	table.WriteString("\n| services | per service | bulk: best (median) | change one after bulk (median) | first change |\n|---|---|---|---|---|\n")
	for _, n := range sizes {
		svcs := programBenchServices(n)
		cfg := testConfig(cg, pin)
		cfg.MaxServices, cfg.MaxSlots, cfg.MaxBackends = 131072, 4*131072, 1024
		var single, bulk, bulkMedian, change, first time.Duration
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				dp, err := Open(ctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				for _, s := range svcs {
					if err := dp.UpsertService(ctx, s); err != nil {
						b.Fatal(err)
					}
				}
				single = time.Since(start)
				if err := dp.Remove(); err != nil {
					b.Fatal(err)
				}

				// The bulk load is repeated (fresh maps each time) and the
				// best and median kept: one load is ~100 ms, where a shared
				// machine's noise shows.
				loads := make([]time.Duration, 0, bulkRounds)
				for r := 0; r < bulkRounds; r++ {
					if r > 0 {
						if err := dp.Remove(); err != nil {
							b.Fatal(err)
						}
					}
					if dp, err = Open(ctx, cfg); err != nil {
						b.Fatal(err)
					}
					start = time.Now()
					if errs := dp.UpsertServices(ctx, svcs); errs != nil {
						b.Fatal(errs)
					}
					loads = append(loads, time.Since(start))
				}
				slices.Sort(loads)
				bulk, bulkMedian = loads[0], loads[len(loads)/2]
				changes := make([]time.Duration, 0, changeSamples)
				for j := 0; j < changeSamples; j++ {
					changed := svcs[(n/2+j)%n]
					changed.Preferred = changed.Preferred[:2]
					start = time.Now()
					if err := dp.UpsertService(ctx, changed); err != nil {
						b.Fatal(err)
					}
					changes = append(changes, time.Since(start))
				}
				first = changes[0]
				slices.Sort(changes)
				change = changes[len(changes)/2]
				if got := checkMaps(b, dp); got[mapServices] != n {
					b.Fatalf("bulk load left %d services, want %d", got[mapServices], n)
				}
				if err := dp.Remove(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(single.Seconds()*1e3, "per-service-ms")
			b.ReportMetric(bulk.Seconds()*1e3, "bulk-ms")
			b.ReportMetric(bulkMedian.Seconds()*1e3, "bulk-median-ms")
			b.ReportMetric(float64(change.Microseconds()), "change-one-µs")
			b.ReportMetric(float64(first.Microseconds()), "first-change-µs")
		})
		fmt.Fprintf(&table, "| %d | %v | %v (%v) | %v | %v |\n", n, single.Round(time.Millisecond), bulk.Round(time.Millisecond), bulkMedian.Round(time.Millisecond), change.Round(time.Microsecond), first.Round(time.Microsecond))
	}
	b.Log(table.String())
}

// BenchmarkUpsertServices is the bulk load of BenchmarkProgram alone, b.N
// times, for profiles: go test -run '^$' -bench BenchmarkUpsertServices
// -benchmem -cpuprofile cpu.prof ./bpf/ (BENCH_SIZES picks the sizes,
// 100,000 by default). maps=fresh loads into maps created for the load
// (Open and Remove outside the timer): a node's first start, or a restart
// after its pins were lost. maps=reused loads into the same maps emptied
// by deleting every service: the kernel's pages of the map are touched
// already, which on this VM saves host-side page faults.
func BenchmarkUpsertServices(b *testing.B) {
	ctx := context.Background()
	bulkBench(b, func(b *testing.B, cfg Config, svcs []loadbalancer.Service) {
		for _, maps := range []string{"fresh", "reused"} {
			b.Run("maps="+maps, func(b *testing.B) {
				b.ReportAllocs()
				var dp *Datapath
				open := func() {
					var err error
					if dp, err = Open(ctx, cfg); err != nil {
						b.Fatal(err)
					}
				}
				if maps == "reused" {
					open()
					loadAndEmpty(b, dp, svcs)
					b.ResetTimer()
				}
				var cpu time.Duration
				walls := make([]time.Duration, 0, b.N)
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					if maps == "fresh" {
						open()
					}
					cpu0, start := processCPU(b), time.Now()
					b.StartTimer()
					if errs := dp.UpsertServices(ctx, svcs); errs != nil {
						b.Fatal(errs)
					}
					b.StopTimer()
					walls = append(walls, time.Since(start))
					cpu += processCPU(b) - cpu0
					if maps == "fresh" {
						if err := dp.Remove(); err != nil {
							b.Fatal(err)
						}
					} else {
						empty(b, dp, svcs)
					}
					b.StartTimer()
				}
				b.StopTimer()
				if maps == "reused" {
					if err := dp.Remove(); err != nil {
						b.Fatal(err)
					}
				}
				reportWalls(b, walls, cpu)
			})
		}
	})
}

// loadAndEmpty loads svcs into dp and deletes them again.
func loadAndEmpty(b *testing.B, dp *Datapath, svcs []loadbalancer.Service) {
	if errs := dp.UpsertServices(context.Background(), svcs); errs != nil {
		b.Fatal(errs)
	}
	empty(b, dp, svcs)
}

// empty deletes svcs from dp and frees what they held.
func empty(b *testing.B, dp *Datapath, svcs []loadbalancer.Service) {
	for _, s := range svcs {
		if err := dp.DeleteService(context.Background(), s.Frontend); err != nil {
			b.Fatal(err)
		}
	}
	if got := checkMaps(b, dp); got[mapServices] != 0 || got[mapBackends] != 0 {
		b.Fatalf("maps hold %v after deleting every service", got)
	}
}

// processCPU is the user and system time the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// programBenchServices returns n services of 3 backends each (of 64
// distinct backends on two nodes).
func programBenchServices(n int) []loadbalancer.Service {
	backends := make([]netip.AddrPort, 64)
	for i := range backends {
		backends[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 8080)
	}
	svcs := make([]loadbalancer.Service, n)
	for i := range svcs {
		svcs[i] = loadbalancer.Service{Frontend: loadbalancer.Frontend{Addr: benchVIP(i), Protocol: loadbalancer.TCP},
			Preferred: []loadbalancer.Backend{{Addr: backends[i%64], Node: nodeA}, {Addr: backends[(i+1)%64], Node: nodeA}, {Addr: backends[(i+2)%64], Node: nodeB}}}
	}
	return svcs
}

// BenchmarkRestart is an agent restart over maps holding N services of 3
// backends: Open adopts the pinned maps (rebuilding its bookkeeping from
// them), then the agent re-upserts everything it wants in bulk, which
// finds it programmed already. Wall time of each restart, min / median /
// p90, and CPU time per restart.
func BenchmarkRestart(b *testing.B) {
	ctx := context.Background()
	bulkBench(b, func(b *testing.B, cfg Config, svcs []loadbalancer.Service) {
		n := len(svcs)
		dp, err := Open(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if errs := dp.UpsertServices(ctx, svcs); errs != nil {
			b.Fatal(errs)
		}
		var cpu time.Duration
		walls := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if err := dp.Close(); err != nil {
				b.Fatal(err)
			}
			cpu0, start := processCPU(b), time.Now()
			b.StartTimer()
			if dp, err = Open(ctx, cfg); err != nil {
				b.Fatal(err)
			}
			if errs := dp.UpsertServices(ctx, svcs); errs != nil {
				b.Fatal(errs)
			}
			b.StopTimer()
			walls = append(walls, time.Since(start))
			cpu += processCPU(b) - cpu0
			b.StartTimer()
		}
		b.StopTimer()
		if got := checkMaps(b, dp); got[mapServices] != n {
			b.Fatalf("restart left %d services, want %d", got[mapServices], n)
		}
		if err := dp.Remove(); err != nil {
			b.Fatal(err)
		}
		reportWalls(b, walls, cpu)
	})
}

// reportWalls reports min, median and p90 of walls and cpu per operation.
func reportWalls(b *testing.B, walls []time.Duration, cpu time.Duration) {
	slices.Sort(walls)
	b.ReportMetric(walls[0].Seconds()*1e3, "min-ms")
	b.ReportMetric(walls[len(walls)/2].Seconds()*1e3, "median-ms")
	b.ReportMetric(walls[len(walls)*9/10].Seconds()*1e3, "p90-ms")
	// CPU time of the whole process (bookkeeping, flusher, kernel writes,
	// GC) per operation: what it costs whatever share of the machine
	// other jobs leave it.
	b.ReportMetric(cpu.Seconds()*1e3/float64(len(walls)), "cpu-ms/op")
}

// bulkBench runs f for each size (BENCH_SIZES, 100,000 by default) with a
// config roomy enough and that many services of programBenchServices.
func bulkBench(b *testing.B, f func(b *testing.B, cfg Config, svcs []loadbalancer.Service)) {
	sizes := []int{100000}
	if os.Getenv("BENCH_SIZES") != "" {
		sizes = benchSizes()
	}
	_, pin, cg := newLab(b)
	for _, n := range sizes {
		svcs := programBenchServices(n)
		cfg := testConfig(cg, pin)
		cfg.MaxServices, cfg.MaxSlots, cfg.MaxBackends = 131072, 4*131072, 1024
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { f(b, cfg, svcs) })
	}
}

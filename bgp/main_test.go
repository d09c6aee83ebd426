package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"
)

// childEnv selects the role of a re-executed test binary: GoBGP binds in the
// process's network namespace, so every speaker of a netns test runs in its
// own process started with nsenter.
const childEnv = "CLUSTERMESH_BGP_CHILD"

// cpuProfileEnv names a directory where every child writes a CPU profile, to
// see where the convergence benchmark's time goes:
//
//	CLUSTERMESH_BGP_CPUPROFILE=/tmp/prof go test -run '^$' -bench Convergence ./bgp/
//	go tool pprof -top bgp.test /tmp/prof/speaker-*.pprof
const cpuProfileEnv = "CLUSTERMESH_BGP_CPUPROFILE"

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	// GoBGP's Serve loop has no way to stop (see doc.go); everything else
	// must be gone.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"))
}

// childReq is one command on the child's stdin (one JSON value per line).
type childReq struct {
	Op       string         `json:"op"` // start, peers, imports, dead, announce, status, metrics, stop, exitforrestart
	Config   *Config        `json:"config,omitempty"`
	Peers    []Peer         `json:"peers,omitempty"`
	Prefixes []netip.Prefix `json:"prefixes,omitempty"`
	Rules    []ImportRule   `json:"rules,omitempty"`
	Addrs    []netip.Addr   `json:"addrs,omitempty"`
}

type childResp struct {
	Err     string  `json:"err,omitempty"`
	Status  *Status `json:"status,omitempty"`
	Metrics string  `json:"metrics,omitempty"`
}

// runChild serves commands until stdin closes (the parent died or is done).
func runChild(role string) int {
	// With cpuProfileEnv set to a directory, the child profiles itself until
	// the "stopprofile" op (children are killed, so it cannot wait for exit).
	if dir := os.Getenv(cpuProfileEnv); dir != "" {
		if f, err := os.CreateTemp(dir, role+"-*.pprof"); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
			defer f.Close()
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sp *Speaker
	reg := prometheus.NewRegistry()
	var rr *Reflector
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req childReq
		var resp childResp
		err := json.Unmarshal(in.Bytes(), &req)
		if err == nil {
			switch req.Op {
			case "start":
				cfg := *req.Config
				cfg.Logger = log
				cfg.Registerer = reg
				if role == "reflector" {
					if rr, err = NewReflector(cfg); err == nil {
						errc := make(chan error, 1)
						go func() { errc <- rr.Run(ctx) }()
						// Wait until it serves or fails.
					wait:
						for {
							select {
							case err = <-errc:
								break wait
							default:
							}
							if _, serr := rr.Status(ctx); serr == nil {
								break
							}
							time.Sleep(10 * time.Millisecond)
						}
					}
				} else if sp, err = NewSpeaker(cfg); err == nil {
					err = sp.Start(ctx)
				}
			case "peers":
				if rr != nil {
					err = rr.SetPeers(ctx, req.Peers)
				} else {
					err = sp.SetPeers(ctx, req.Peers)
				}
			case "imports":
				if rr != nil {
					err = rr.SetImportPolicy(ctx, req.Rules)
				} else {
					err = sp.SetImportPolicy(ctx, req.Rules)
				}
			case "dead":
				err = sp.SetDeadNextHops(ctx, req.Addrs)
			case "stop":
				err = sp.Stop(ctx)
			case "exitforrestart":
				// An agent restarting: the sessions end with the process.
				if err = sp.StopForRestart(ctx); err == nil {
					_ = out.Encode(resp)
					os.Exit(0)
				}
			case "stopprofile":
				pprof.StopCPUProfile()
			case "announce":
				err = sp.Announce(ctx, req.Prefixes)
			case "status":
				var st Status
				if rr != nil {
					st, err = rr.Status(ctx)
				} else {
					st, err = sp.Status(ctx)
				}
				resp.Status = &st
			case "metrics":
				var mfs []*dto.MetricFamily
				if mfs, err = reg.Gather(); err == nil {
					var b strings.Builder
					for _, mf := range mfs {
						if _, err = expfmt.MetricFamilyToText(&b, mf); err != nil {
							break
						}
					}
					resp.Metrics = b.String()
				}
			default:
				err = fmt.Errorf("unknown op %q", req.Op)
			}
		}
		if err != nil {
			resp.Err = err.Error()
		}
		if out.Encode(resp) != nil {
			return 1
		}
	}
	if sp != nil {
		_ = sp.Stop(context.Background())
	}
	return 0
}

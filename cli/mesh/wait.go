package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// DefaultStoreWait is how long enable and connect wait, by default, for a
// store that does not answer yet: its clustermesh-apiserver was just
// installed and is still being pulled, scheduled or started.
const DefaultStoreWait = 2 * time.Minute

// StoreWait says how long to wait for stores that do not answer yet, and
// whom to tell meanwhile.
type StoreWait struct {
	// For is how long to keep retrying; zero means DefaultStoreWait,
	// negative checks once.
	For time.Duration
	// Progress, if set, gets a line each time the reason to wait changes
	// (the CLI prints them on stderr, as status --wait does).
	Progress func(line string)
	Log      *slog.Logger
}

// until runs check until it finds no problem, finds one that time will not
// fix (anything but a store that does not answer), or w.For has passed. It
// returns nil when check found nothing, ctx's error when ctx ended, and
// otherwise a *CheckError of op (with outcome) and the last problems,
// saying how long it waited when the stores were all that was wrong.
func (w StoreWait) until(ctx context.Context, op, outcome string, check func(context.Context) []Problem) error {
	wait := w.For
	if wait == 0 {
		wait = DefaultStoreWait
	}
	log := logging.OrDiscard(w.Log)
	start := time.Now()
	retry := backoff.New(500*time.Millisecond, 5*time.Second)
	last := ""
	for {
		ps := check(ctx)
		if len(ps) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !onlyUnreachable(ps) || wait < 0 {
			return &CheckError{Op: op, Outcome: outcome, Problems: ps}
		}
		if time.Since(start) >= wait {
			return &CheckError{Op: fmt.Sprintf("%s (waited %s for the stores)", op, wait.Round(time.Second)), Outcome: outcome, Problems: ps}
		}
		if w.Progress != nil && ps[0].Reason != last {
			w.Progress(fmt.Sprintf("waiting (%s of %s): %s", time.Since(start).Round(time.Second), wait.Round(time.Second), ps[0].Reason))
			last = ps[0].Reason
		}
		log.Info("waiting for a store to answer", "problem", ps[0].Reason, "waited", time.Since(start).Round(time.Second), "wait_for", wait)
		if err := retry.Wait(ctx); err != nil {
			return err
		}
	}
}

// onlyUnreachable reports whether every problem is a store that does not
// answer: the one problem that time may fix.
func onlyUnreachable(ps []Problem) bool {
	for _, p := range ps {
		if !errors.Is(p.Err, ErrUnreachable) {
			return false
		}
	}
	return true
}

// WaitStore waits until the cluster's own store serves: it answers at the
// endpoint enable recorded (or opts.Endpoint) and a read under the mesh's
// key prefix with the admin certificate succeeds, the first thing connect
// and status do with it. A store that does not answer yet (its apiserver
// starting) is retried for w.For, with progress; anything else (not
// enabled, credentials missing) fails at once.
func WaitStore(ctx context.Context, c *Cluster, opts StoreOptions, w StoreWait) error {
	info, err := c.ReadInfo(ctx)
	if err != nil {
		return err
	}
	creds, err := c.credentials(ctx, SecretAdmin)
	if err != nil {
		return err
	}
	ep := info.Endpoint
	if opts.Endpoint != "" {
		ep = opts.Endpoint
	}
	op := fmt.Sprintf("context %s: the wait for the store of cluster %s", c.Context, info.Name)
	return w.until(ctx, op, "gave up", func(ctx context.Context) []Problem {
		cli, err := openStore(ctx, ep, creds)
		if err != nil {
			ps := []Problem{problem(ErrUnreachable,
				fmt.Sprintf("check the apiserver (clustermesh status %s; %s); if %s is not reachable from here, pass --endpoint (e.g. a port-forward)", c.ctxFlag(), c.logsCmd(), ep),
				"the store of cluster %s at %s does not answer: %v", info.Name, ep, err)}
			// A pod whose image is missing will not start by waiting
			// (kind has no registry to pull ours from): say so at once.
			if waits, err := c.ImageWaits(ctx); err == nil {
				ps = append(c.imageProblems(waits), ps...)
			}
			// Nor will a claim no provisioner binds.
			if claims, err := c.storeClaimProblems(ctx); err == nil {
				ps = append(claims, ps...)
			}
			return ps
		}
		cli.Close()
		return nil
	})
}

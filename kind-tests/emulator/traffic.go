package emulator

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/clustermesh/clustermesh/kind-tests/attempts"
)

// Attempt is one connection attempt of a traffic client.
type Attempt = attempts.Attempt

// Summary counts attempts.
type Summary = attempts.Summary

// Summarize counts the attempts.
func Summarize(as []Attempt) Summary { return attempts.Summarize(as) }

// Traffic is a running probe process on a node: it connects to a target over
// and over (see kind-tests/cmd/probe) and the harness records each attempt.
type Traffic struct {
	Node   *Node
	Target netip.AddrPort
	Proto  string

	proc *Process
	*attempts.Log
}

// TrafficOptions tunes StartTraffic; nil means TCP every 10ms.
type TrafficOptions struct {
	Proto    string // "tcp" (default) or "udp"
	Interval time.Duration
	Timeout  time.Duration
}

// StartTraffic starts a probe in the node's namespace and cgroup, so the
// node's socket load balancer applies to it, aimed at target.
func (n *Node) StartTraffic(bins *Binaries, name string, target netip.AddrPort, opts *TrafficOptions) (*Traffic, error) {
	return n.startTraffic(bins, n.Netns, name, target, opts)
}

// StartTraffic starts a probe inside the pod's network namespace (and its
// node's cgroup, where the node's socket hooks apply), as a client
// container of the pod would: its connections carry the pod's address and
// identity.
func (p *Pod) StartTraffic(bins *Binaries, name string, target netip.AddrPort, opts *TrafficOptions) (*Traffic, error) {
	return p.Node.startTraffic(bins, p.Netns, name, target, opts)
}

func (n *Node) startTraffic(bins *Binaries, netns, name string, target netip.AddrPort, opts *TrafficOptions) (*Traffic, error) {
	if err := bins.Require(PartProbe); err != nil {
		return nil, err
	}
	o := TrafficOptions{Proto: "tcp", Interval: 10 * time.Millisecond, Timeout: 500 * time.Millisecond}
	if opts != nil {
		if opts.Proto != "" {
			o.Proto = opts.Proto
		}
		if opts.Interval > 0 {
			o.Interval = opts.Interval
		}
		if opts.Timeout > 0 {
			o.Timeout = opts.Timeout
		}
	}
	pr, pw := io.Pipe()
	t := &Traffic{Node: n, Target: target, Proto: o.Proto, Log: attempts.NewLog(fmt.Sprintf("on %s to %s", n.Name, target))}
	proc, err := n.StartProcess(ProcessSpec{
		Name:  name,
		Netns: netns,
		Path:  bins.Path(PartProbe),
		Args: []string{
			"-target", target.String(), "-proto", o.Proto,
			"-interval", o.Interval.String(), "-timeout", o.Timeout.String(),
		},
		Stdout: pw,
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: traffic %s: %w", n.Name, name, err)
	}
	t.proc = proc
	go func() {
		<-proc.Done()
		pw.Close()
	}()
	go t.Read(pr, proc.Err)
	return t, nil
}

// Stop ends the probe and waits until its last lines are recorded.
func (t *Traffic) Stop(ctx context.Context) error {
	err := t.proc.Stop(ctx)
	<-t.Done()
	return err
}

// From is the node the probe runs on.
func (t *Traffic) From() string { return t.Node.Name }

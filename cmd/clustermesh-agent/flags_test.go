package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bgp"
)

func TestShortTimersKeepExplicitFlags(t *testing.T) {
	kind := bgp.DefaultKindConfig()
	tests := []struct {
		name  string
		args  []string
		check func(bgp.Config) bool
	}{
		{"defaults are the kind timers", nil, func(c bgp.Config) bool {
			return c.HoldTime == kind.HoldTime && c.SessionLossGrace == kind.SessionLossGrace && c.ListenPort == kind.ListenPort
		}},
		{"explicit timer wins", []string{"--bgp-hold-time", "21s"}, func(c bgp.Config) bool {
			return c.HoldTime == 21*time.Second && c.KeepaliveInterval == kind.KeepaliveInterval
		}},
		{"listen port", []string{"--bgp-listen-port", "-1"}, func(c bgp.Config) bool { return c.ListenPort == -1 }},
		{"route table", []string{"--bgp-route-table", "4242"}, func(c bgp.Config) bool { return c.Table == 4242 }},
		{"deprecated --bgp-table", []string{"--bgp-table", "77"}, func(c bgp.Config) bool { return c.Table == 77 }},
		{"max prefixes", []string{"--bgp-max-prefixes", "5"}, func(c bgp.Config) bool { return c.MaxPrefixes == 5 }},
		{"other flags ignored", []string{"--health-probe-interval", "1s", "--log-level", "debug"}, func(c bgp.Config) bool {
			return c.HoldTime == kind.HoldTime
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newRootCommand()
			if err := cmd.Flags().Parse(append([]string{"--bgp-short-timers"}, tt.args...)); err != nil {
				t.Fatal(err)
			}
			if c := shortTimers(cmd.Flags()); !tt.check(c) {
				t.Errorf("%v: config %+v", tt.args, c)
			}
		})
	}
}

// TestHelpFlags checks the BGP flags of the agent and of the bgp package
// are registered once, with the deprecated alias hidden.
func TestHelpFlags(t *testing.T) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	defined := map[string]int{}
	for _, line := range strings.Split(help, "\n") {
		if f, ok := strings.CutPrefix(strings.TrimSpace(line), "--"); ok {
			name, _, _ := strings.Cut(f, " ")
			defined["--"+name]++
		}
	}
	for _, f := range []string{"--bgp", "--bgp-listen-port", "--bgp-route-table", "--bgp-short-timers", "--bgp-max-prefixes", "--bgp-hold-time", "--health", "--health-bind", "--bpf-cgroup", "--log-level", "--log-format"} {
		if n := defined[f]; n != 1 {
			t.Errorf("--help defines %q %d times, want once", f, n)
		}
	}
	if strings.Contains(help, "--bgp-table") {
		t.Errorf("--help shows the deprecated --bgp-table")
	}
}

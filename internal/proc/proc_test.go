package proc_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/internal/proc"
)

func TestStopTermThenKill(t *testing.T) {
	tests := []struct {
		name   string
		script string
		// wantSignal is how the process must have ended.
		wantSignal string
	}{
		{"exits on SIGTERM", "printf 'r%sy\\n' ead; exec sleep 600", "terminated"},
		{"ignores SIGTERM", "trap '' TERM; printf 'r%sy\\n' ead; sleep 600 & wait", "killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := proc.StartT(t, proc.Spec{Name: "sh", Path: "/bin/sh", Args: []string{"-c", tt.script}, LogDir: t.TempDir()})
			waitLog(t, p, "ready")
			ctx, cancel := context.WithCancel(context.Background())
			if tt.wantSignal == "killed" {
				// Do not wait StopGrace: the cancelled context escalates.
				go func() { time.Sleep(200 * time.Millisecond); cancel() }()
			}
			defer cancel()
			if err := p.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if !p.Exited() || !strings.Contains(p.Err().Error(), tt.wantSignal) {
				t.Errorf("exited %t, err %v; want %s", p.Exited(), p.Err(), tt.wantSignal)
			}
		})
	}
}

// waitLog waits for s in the process's output (not in the command line
// the log starts with).
func waitLog(t *testing.T, p *proc.Process, s string) {
	t.Helper()
	poll.Eventually(t, time.Minute, "output "+s, func() (bool, string) {
		return strings.Contains(p.Tail(1024), s) && !p.Exited(), p.Tail(1024)
	})
}

func TestWaitTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A process that exits without listening is reported at once, with its log.
	p := proc.StartT(t, proc.Spec{Name: "fails", Path: "/bin/sh", Args: []string{"-c", "echo no config; exit 3"}, LogDir: t.TempDir()})
	err = p.WaitTCP(ctx, addr)
	if err == nil || !strings.Contains(err.Error(), "no config") || ctx.Err() != nil {
		t.Errorf("WaitTCP = %v, want the exit and the log before the deadline", err)
	}

	// A process that listens later is ready once it does.
	p = proc.StartT(t, proc.Spec{Name: "sleeper", Path: "sleep", Args: []string{"600"}, LogDir: t.TempDir()})
	go func() {
		time.Sleep(100 * time.Millisecond)
		if ln, err := net.Listen("tcp", addr); err == nil {
			t.Cleanup(func() { ln.Close() })
		}
	}()
	if err := p.WaitTCP(ctx, addr); err != nil {
		t.Error(err)
	}
}

func TestStartTKillsAtEnd(t *testing.T) {
	var p *proc.Process
	t.Run("inner", func(t *testing.T) {
		p = proc.StartT(t, proc.Spec{Name: "sleeper", Path: "sleep", Args: []string{"600"}, LogDir: t.TempDir()})
	})
	if !p.Exited() {
		t.Error("process outlived its test")
	}
}

func TestWaitReportsExitStatus(t *testing.T) {
	for _, tt := range []struct {
		script  string
		wantErr bool
	}{{"exit 0", false}, {"exit 3", true}} {
		p := proc.StartT(t, proc.Spec{Name: "sh", Path: "/bin/sh", Args: []string{"-c", tt.script}, LogDir: t.TempDir()})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := p.Wait(ctx)
		timedOut := ctx.Err() != nil
		cancel()
		if (err != nil) != tt.wantErr || timedOut {
			t.Errorf("%s: Wait = %v, want error %t", tt.script, err, tt.wantErr)
		}
	}
}

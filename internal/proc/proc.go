// Package proc runs the child processes of tests and test infrastructure:
// a control plane's etcd and kube-apiserver (internal/kubetest), the agents,
// stores and traffic generators of the cluster emulator. It is the one place
// that starts a binary with its output in a log file, optionally inside a
// named network namespace and a cgroup v2 directory, waits for it to be
// ready, and stops it with SIGTERM and then SIGKILL.
//
// Every child gets SIGKILL when the process that started it dies (Linux
// parent-death signal) and runs in its own process group, so a crashed test
// or harness leaves nothing running. Tests use StartT, which also kills the
// child when the test ends. A Process's methods are safe for concurrent use.
package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/poll"
)

// StopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 10 * time.Second

// Spec describes a process to start.
type Spec struct {
	// Name identifies the process in logs and errors; its output goes to
	// <LogDir>/<Name>.log, appended to.
	Name string
	Path string
	Args []string
	// Env is added to the starter's own environment.
	Env []string
	// LogDir holds the log file.
	LogDir string
	// Netns is the named network namespace to run in; empty for the
	// starter's own.
	Netns string
	// Cgroup is the cgroup v2 directory the process starts in; empty for
	// the starter's own. The process is placed there by clone3 before it
	// runs a single instruction, so programs attached to that cgroup see all
	// of its sockets; its children inherit it.
	Cgroup string
	// Stdin, if set, is the process's standard input.
	Stdin io.Reader
	// Stdout, if set, receives the process's standard output instead of the
	// log file. Standard error always goes to the log file.
	Stdout io.Writer
}

// Process is a running (or exited) process started by Start.
type Process struct {
	Spec    Spec
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	err     error
	waitErr error
}

// Start starts spec. The caller must stop the process (Stop or Kill) or
// use StartT.
func Start(spec Spec) (*Process, error) {
	logPath := filepath.Join(spec.LogDir, spec.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("process %s: log: %w", spec.Name, err)
	}
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if spec.Cgroup != "" {
		cg, err := unix.Open(spec.Cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			logf.Close()
			return nil, fmt.Errorf("process %s: open cgroup %s: %w", spec.Name, spec.Cgroup, err)
		}
		defer unix.Close(cg)
		attr.UseCgroupFD, attr.CgroupFD = true, cg
	}
	path, args := spec.Path, spec.Args
	if spec.Netns != "" {
		// nsenter execs the program: the pid is the program's.
		path = "nsenter"
		args = append([]string{"--net=/run/netns/" + spec.Netns, "--", spec.Path}, spec.Args...)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdin = spec.Stdin
	cmd.Stdout, cmd.Stderr = logf, logf
	if spec.Stdout != nil {
		cmd.Stdout = spec.Stdout
	}
	cmd.SysProcAttr = attr
	fmt.Fprintf(logf, "--- %s %s %s\n", time.Now().Format(time.RFC3339Nano), path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("process %s: start %s: %w", spec.Name, spec.Path, err)
	}
	p := &Process{Spec: spec, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		werr := cmd.Wait()
		logf.Close()
		err := werr
		if err == nil {
			err = errors.New("exited")
		}
		p.mu.Lock()
		p.err = fmt.Errorf("process %s: %w", spec.Name, err)
		p.waitErr = werr
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// StartT starts spec for the duration of tb: it fails tb when the process
// cannot start, kills it when the test ends, and then, if tb failed, logs
// the tail of its log.
func StartT(tb testing.TB, spec Spec) *Process {
	tb.Helper()
	p, err := Start(spec)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = p.Kill()
		if tb.Failed() {
			tb.Logf("==> %s (%s)\n%s", spec.Name, p.LogPath, p.Tail(4096))
		}
	})
	return p
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns how the process exited (never nil once it has); nil while it
// runs.
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Wait waits for the process to exit and returns nil if it exited with
// status 0, or ctx's error if ctx ends first.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("process %s: still running: %w", p.Spec.Name, ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waitErr != nil {
		return fmt.Errorf("process %s: %w", p.Spec.Name, p.waitErr)
	}
	return nil
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process if it still runs.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("process %s: signal %v: %w", p.Spec.Name, sig, err)
	}
	return nil
}

// Kill ends the process and everything left in its process group at once
// (SIGKILL), as a machine losing power would, and waits for it to be reaped.
func (p *Process) Kill() error {
	// The group's id is the process's (Setpgid); it outlives the process
	// while a child of it runs.
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("process %s: kill: %w", p.Spec.Name, err)
	}
	<-p.done
	return nil
}

// Stop asks the process to terminate (SIGTERM) and kills it if it has not
// exited after StopGrace or when ctx is done.
func (p *Process) Stop(ctx context.Context) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(StopGrace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	case <-t.C:
	}
	return p.Kill()
}

// WaitTCP waits until addr (host:port) accepts TCP connections, for a
// process that is ready when it listens. It fails early, with the tail of
// the log, when the process exits.
func (p *Process) WaitTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	err := poll.Until(ctx, func(ctx context.Context) error {
		if p.Exited() {
			return poll.Final(p.Err())
		}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if p.Exited() {
		return fmt.Errorf("exited before listening on %s: %w: %s", addr, p.Err(), p.Tail(4096))
	}
	if err != nil {
		return fmt.Errorf("process %s: not listening on %s: %w; log %s", p.Spec.Name, addr, err, p.LogPath)
	}
	return nil
}

// Tail returns the last n bytes of the process's log, for error reports.
func (p *Process) Tail(n int64) string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return strings.TrimSpace(string(b))
}

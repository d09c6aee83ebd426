package emulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ip runs the ip(8) command, optionally in a named network namespace through
// its -n switch (which does not remount /sys, unlike `ip netns exec`).
func ip(ctx context.Context, netns string, args ...string) error {
	full := args
	if netns != "" {
		full = append([]string{"-n", netns}, args...)
	}
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// sysctl sets kernel parameters inside a named network namespace. /proc/sys/net
// follows the network namespace of the writer, so nsenter --net is enough.
func sysctl(ctx context.Context, netns string, kv ...string) error {
	args := []string{"--net=" + netnsPath(netns), "sysctl", "-q", "-w"}
	args = append(args, kv...)
	out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns %s: sysctl %s: %w: %s", netns, strings.Join(kv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func netnsPath(name string) string { return "/run/netns/" + name }

// ProcessSpec describes a process the harness starts.
type ProcessSpec struct {
	// Name identifies the process in logs and errors; its output goes to
	// <run dir>/logs/<Name>.log.
	Name string
	Path string
	Args []string
	// Env is added to the harness's own environment.
	Env []string
	// Netns is the named network namespace to run in; empty for the root one.
	Netns string
	// Cgroup is the cgroup v2 directory the process starts in; empty for the
	// run's "misc" cgroup. Children inherit it, so Clean can find them.
	Cgroup string
	// Stdout, if set, receives the process's standard output instead of the
	// log file. Standard error always goes to the log file.
	Stdout io.Writer
}

// Process is a running (or exited) process started by Run.Start.
type Process struct {
	Spec    ProcessSpec
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File

	mu  sync.Mutex
	err error
}

// Pid returns the process id (of nsenter, which execs into the program, so it
// is the program's pid too).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns how the process exited; nil while it runs.
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
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

// Kill ends the process at once (SIGKILL), as a node losing power would, and
// waits for it to be reaped.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

// Stop asks the process to terminate (SIGTERM) and kills it if it has not
// exited when ctx is done or after 10 seconds.
func (p *Process) Stop(ctx context.Context) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	case <-t.C:
	}
	return p.Kill()
}

// Tail returns the last n bytes of the process's log, for error reports.
func (p *Process) Tail(n int64) string {
	return tailFile(p.LogPath, n)
}

func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return string(b)
}

// startProcess starts spec in its netns and cgroup. The process is placed in
// the cgroup by clone3 before it runs a single instruction, so programs
// attached to that cgroup (connect4 …) see all of its sockets.
func startProcess(spec ProcessSpec, logDir, defaultCgroup string) (*Process, error) {
	if spec.Cgroup == "" {
		spec.Cgroup = defaultCgroup
	}
	logPath := filepath.Join(logDir, spec.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("process %s: log: %w", spec.Name, err)
	}
	cg, err := unix.Open(spec.Cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("process %s: open cgroup %s: %w", spec.Name, spec.Cgroup, err)
	}
	defer unix.Close(cg)

	path, args := spec.Path, spec.Args
	if spec.Netns != "" {
		path = "nsenter"
		args = append([]string{"--net=" + netnsPath(spec.Netns), "--", spec.Path}, spec.Args...)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stderr = logf
	cmd.Stdout = logf
	if spec.Stdout != nil {
		cmd.Stdout = spec.Stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    cg,
		// A harness that dies without Close takes its processes with it.
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	fmt.Fprintf(logf, "--- %s %s %s\n", time.Now().Format(time.RFC3339Nano), path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("process %s: start %s: %w", spec.Name, spec.Path, err)
	}
	p := &Process{Spec: spec, LogPath: logPath, cmd: cmd, done: make(chan struct{}), log: logf}
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		if err == nil {
			err = fmt.Errorf("process %s: exited", spec.Name)
		} else {
			err = fmt.Errorf("process %s: %w", spec.Name, err)
		}
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

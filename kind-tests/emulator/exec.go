package emulator

import "github.com/clustermesh/clustermesh/internal/proc"

// ProcessSpec describes a process the harness starts (see Run.Start and
// Node.StartProcess, which fill in LogDir and Cgroup). The emulator's
// processes are internal/proc's, the same kind the control planes of
// internal/kubetest run as.
type ProcessSpec = proc.Spec

// Process is a running (or exited) process started by Run.Start.
type Process = proc.Process

package emulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Part names of the project (and tools) the harness uses.
const (
	PartProbe         = "probe"                 // kind-tests/cmd/probe, always built
	PartAgent         = "clustermesh-agent"     // cmd/clustermesh-agent
	PartAPIServer     = "clustermesh-apiserver" // cmd/clustermesh-apiserver
	PartCLI           = "clustermesh"           // cmd/clustermesh
	PartKubeAPIServer = "kube-apiserver"        // hack/bin
	PartKCM           = "kube-controller-manager"
	PartKubectl       = "kubectl"
	PartEtcd          = "etcd"
)

// Binaries are the executables a run uses, built from the current tree so
// drills always exercise current code.
type Binaries struct {
	// Dir holds the project binaries built by Build.
	Dir string
	// Paths maps a part to its executable; a part absent from Paths is
	// missing or broken (see Missing and Broken).
	Paths map[string]string
	// Missing holds parts whose source does not exist in the tree.
	Missing map[string]string
	// Broken holds parts whose source exists but did not build.
	Broken map[string]error
	// ToolsDir is what internal/kubetest is pointed at (through
	// CLUSTERMESH_TOOLS_BIN): the hack/bin tools, with kube-apiserver
	// wrapped to allow privileged containers, which the agent DaemonSet
	// asks for and kubetest's defaults refuse.
	ToolsDir string
}

// Path returns the executable of part, or "".
func (b *Binaries) Path(part string) string { return b.Paths[part] }

// Require returns an error naming every part of parts that is not usable:
// wrapping ErrMissingPart when its source is absent, the build error when it
// is broken.
func (b *Binaries) Require(parts ...string) error {
	var errs []error
	for _, p := range parts {
		if _, ok := b.Paths[p]; ok {
			continue
		}
		if err, ok := b.Broken[p]; ok {
			errs = append(errs, fmt.Errorf("part %s does not build: %w", p, err))
			continue
		}
		why := b.Missing[p]
		if why == "" {
			why = "not built"
		}
		errs = append(errs, fmt.Errorf("part %s: %w: %s", p, ErrMissingPart, why))
	}
	return errors.Join(errs...)
}

// ModuleRoot finds the project's root (the directory of the go.mod of
// github.com/clustermesh/clustermesh) from the working directory up.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/clustermesh/clustermesh\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("module root: no go.mod of github.com/clustermesh/clustermesh above the working directory")
		}
		dir = parent
	}
}

// Build compiles the probe and every project command that exists into dir,
// and finds the Kubernetes tools in root/hack/bin (built by `make tools`; see
// BuildTools). A part whose source is missing is recorded in Missing; one
// that does not compile in Broken. Only a failure to build the probe is an
// error. With only non-empty, just those project parts are built (the probe
// always is).
func Build(ctx context.Context, root, dir string, log *slog.Logger, only ...string) (*Binaries, error) {
	if log == nil {
		log = slog.Default()
	}
	b := &Binaries{Dir: dir, Paths: map[string]string{}, Missing: map[string]string{}, Broken: map[string]error{}}
	pkgs := []struct{ part, pkg string }{
		{PartProbe, "./kind-tests/cmd/probe"},
		{PartAgent, "./cmd/clustermesh-agent"},
		{PartAPIServer, "./cmd/clustermesh-apiserver"},
		{PartCLI, "./cmd/clustermesh"},
	}
	for _, p := range pkgs {
		if len(only) > 0 && p.part != PartProbe && !slices.Contains(only, p.part) {
			b.Missing[p.part] = "not requested"
			continue
		}
		src := filepath.Join(root, p.pkg)
		if _, err := os.Stat(filepath.Join(src, "main.go")); errors.Is(err, fs.ErrNotExist) {
			b.Missing[p.part] = p.pkg + " does not exist yet"
			continue
		}
		out := filepath.Join(dir, p.part)
		log.Info("building", "part", p.part, "pkg", p.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, p.pkg)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("building %s: %w", p.part, ctx.Err())
			}
			err = fmt.Errorf("go build %s: %w: %s", p.pkg, err, strings.TrimSpace(string(msg)))
			if p.part == PartProbe {
				return nil, err
			}
			b.Broken[p.part] = err
			continue
		}
		b.Paths[p.part] = out
	}
	for _, t := range []string{PartKubeAPIServer, PartKCM, PartKubectl, PartEtcd} {
		path := filepath.Join(root, "hack", "bin", t)
		if _, err := os.Stat(path); err != nil {
			b.Missing[t] = "hack/bin/" + t + " not built (run `make tools`)"
			continue
		}
		b.Paths[t] = path
	}
	if err := b.wrapTools(); err != nil {
		return nil, err
	}
	return b, nil
}

// InCI reports whether the environment says this is CI (CI=true), where a
// drill must fail rather than skip when a part that exists does not work.
func InCI() bool { return os.Getenv("CI") == "true" }

func (b *Binaries) wrapTools() error {
	b.ToolsDir = filepath.Join(b.Dir, "tools")
	if err := os.MkdirAll(b.ToolsDir, 0o755); err != nil {
		return fmt.Errorf("tools dir: %w", err)
	}
	for _, t := range []string{PartKCM, PartKubectl, PartEtcd} {
		if p, ok := b.Paths[t]; ok {
			link := filepath.Join(b.ToolsDir, t)
			_ = os.Remove(link)
			if err := os.Symlink(p, link); err != nil {
				return fmt.Errorf("tools dir: %w", err)
			}
		}
	}
	if p, ok := b.Paths[PartKubeAPIServer]; ok {
		script := fmt.Sprintf("#!/bin/sh\nexec %q --allow-privileged=true \"$@\"\n", p)
		if err := os.WriteFile(filepath.Join(b.ToolsDir, PartKubeAPIServer), []byte(script), 0o755); err != nil {
			return fmt.Errorf("tools dir: %w", err)
		}
	}
	return nil
}

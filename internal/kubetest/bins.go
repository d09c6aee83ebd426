package kubetest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Names of the binaries hack/ builds.
const (
	Etcd                  = "etcd"
	KubeAPIServer         = "kube-apiserver"
	KubeControllerManager = "kube-controller-manager"
	Kubectl               = "kubectl"
)

// EnvToolsBin overrides where the binaries are looked up.
const EnvToolsBin = "CLUSTERMESH_TOOLS_BIN"

// rootModule is the module whose hack/bin holds the binaries.
const rootModule = "github.com/clustermesh/clustermesh"

// ErrMissingBinary is returned when a binary hack/ builds is not found.
var ErrMissingBinary = errors.New("binary not found")

// BinDir returns the directory holding the control-plane binaries: the value
// of CLUSTERMESH_TOOLS_BIN if set, else hack/bin of the clustermesh module
// found by walking up from the working directory.
func BinDir() (string, error) {
	if dir := os.Getenv(EnvToolsBin); dir != "" {
		return dir, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find tools: %w", err)
	}
	for dir := wd; ; {
		if moduleName(filepath.Join(dir, "go.mod")) == rootModule {
			return filepath.Join(dir, "hack", "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find tools: no go.mod of %s above %s; set %s", rootModule, wd, EnvToolsBin)
		}
		dir = parent
	}
}

// moduleName returns the module path declared by a go.mod, or "".
func moduleName(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Binary returns the path of one of the binaries (Etcd, KubeAPIServer, ...),
// or an error wrapping ErrMissingBinary naming where it was looked for.
func Binary(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s in %s: %w", name, dir, ErrMissingBinary)
	}
	return p, nil
}

package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// coreDNS returns a CoreDNS binary built from hack/kind/coredns with the
// flags hack/kind/build-node-image.sh uses, cached in the same place
// ($CLUSTERMESH_CACHE/kind-coredns-KEY, KEY as hack/kind/lib.sh's
// KEY_COREDNS): the test and the node image build share one build, which
// takes 8-13 minutes cold and seconds once cached.
func coreDNS(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	key, err := corednsKey(root)
	if err != nil {
		t.Fatal(err)
	}
	cacheRoot := os.Getenv("CLUSTERMESH_CACHE")
	if cacheRoot == "" {
		cacheRoot = "/var/cache/clustermesh"
	}
	dir := filepath.Join(cacheRoot, "kind-coredns-"+key)
	bin := filepath.Join(dir, "coredns")
	if st, err := os.Stat(bin); err == nil && st.Mode()&0o111 != 0 {
		return bin
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("CoreDNS is not cached in %s and no go toolchain to build it: %v", dir, err)
	}
	// Build into a directory of our own, then rename it into place, so that
	// a concurrent build (the node image's, another test run's) never sees
	// half a binary.
	tmp := dir + ".tmp-" + randomHex()
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		// No writable cache: build for this run only.
		tmp, dir = t.TempDir(), ""
	}
	t.Logf("building CoreDNS from hack/kind/coredns into %s (8-13 minutes cold; cached afterwards)", tmp)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(tmp, "coredns"), ".")
	cmd.Dir = filepath.Join(root, "hack", "kind", "coredns")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod -buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build CoreDNS in %s: %v\n%s", cmd.Dir, err, out)
	}
	if dir == "" {
		return filepath.Join(tmp, "coredns")
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Lost a race to another build of the same inputs: use either.
		if _, serr := os.Stat(bin); serr != nil {
			t.Fatalf("cache CoreDNS in %s: %v", dir, err)
		}
		_ = os.RemoveAll(tmp)
	}
	return bin
}

// corednsKey is hack/kind/lib.sh's KEY_COREDNS: the first 16 hex digits of
// the SHA-256 of the CoreDNS module's files and the plugin's module files
// and non-test sources, concatenated in that order (sources bytewise sorted).
func corednsKey(root string) (string, error) {
	files := []string{
		"hack/kind/coredns/go.mod", "hack/kind/coredns/go.sum", "hack/kind/coredns/main.go",
		"coredns/multicluster/go.mod", "coredns/multicluster/go.sum",
	}
	srcs, err := filepath.Glob(filepath.Join(root, "coredns", "multicluster", "*.go"))
	if err != nil {
		return "", err
	}
	for _, s := range srcs { // Glob sorts bytewise, as LC_ALL=C sort does.
		if !strings.HasSuffix(s, "_test.go") {
			files = append(files, strings.TrimPrefix(s, root+string(filepath.Separator)))
		}
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("CoreDNS cache key: %w", err)
		} else if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func randomHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

package kindenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/kind-tests/drills"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// kindMesh opens the kind clusters `make kind-drills` created, or skips
// without CLUSTERMESH_KIND=1.
func kindMesh(t *testing.T) (*Mesh, Options) {
	t.Helper()
	if os.Getenv("CLUSTERMESH_KIND") != "1" {
		t.Skip("real kind clusters: run `make kind-drills` (sets CLUSTERMESH_KIND=1)")
	}
	root, err := emulator.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := env("CLUSTERMESH_KIND_DIR", filepath.Join(root, "bin", "kind"))
	prefix := env("CLUSTERMESH_KIND_PREFIX", "cm")
	tag := os.Getenv("CLUSTERMESH_IMAGE_TAG")
	if tag == "" {
		t.Fatal("CLUSTERMESH_IMAGE_TAG is not set: the tag `make images` gave the echo and probe images")
	}
	opts := Options{
		CLI:        env("CLUSTERMESH_CLI", filepath.Join(root, "bin", "clustermesh")),
		EchoImage:  "clustermesh/echo:" + tag,
		ProbeImage: "clustermesh/probe:" + tag,
		Log:        nil,
	}
	for _, c := range []string{"c1", "c2"} {
		name := prefix + "-" + c
		opts.Clusters = append(opts.Clusters, name)
		opts.Kubeconfigs = append(opts.Kubeconfigs, filepath.Join(dir, name+".kubeconfig"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m, opts
}

// TestKindDrills runs every drill of drills.Sequence on two real kind
// clusters: what `make kind-drills` runs, after creating the clusters
// (hack/kind) and loading the images. It needs CLUSTERMESH_KIND=1 (and the
// clusters); under CI=true a missing cluster is a failure, not a skip.
//
// Settings (the make target sets them): CLUSTERMESH_KIND_DIR (kubeconfigs,
// default bin/kind), CLUSTERMESH_KIND_PREFIX (cluster names PREFIX-c1,
// PREFIX-c2; default cm), CLUSTERMESH_CLI (default bin/clustermesh),
// CLUSTERMESH_IMAGE_TAG (the images' tag, the CLI's version).
func TestKindDrills(t *testing.T) {
	m, opts := kindMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	report := &emulator.Report{}
	e := &drills.Env{Mesh: m, Service: "echo", Replicas: 2, Report: report, Logf: t.Logf, Wait: 3 * time.Minute}
	t.Cleanup(func() {
		t.Logf("drill figures on kind (%s):\n%s", strings.Join(opts.Clusters, ", "), report)
		_ = os.WriteFile(filepath.Join(os.TempDir(), "clustermesh-kind-drills-report.txt"), []byte(report.String()), 0o644)
		if t.Failed() {
			var b strings.Builder
			m.Logs(context.Background(), &b)
			t.Logf("mesh pods' logs:\n%s", b.String())
		}
	})
	drills.RunSequence(ctx, t, e, nil)
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

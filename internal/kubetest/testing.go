package kubetest

import (
	"context"
	"errors"
	"os"
	"testing"
)

// Require checks that the binaries a cluster with opts needs are present. When
// one is missing it skips tb with a message saying how to build them, unless
// CI=true, where it fails tb: tests must never silently skip in CI.
func Require(tb testing.TB, opts *Options) {
	tb.Helper()
	need := []string{Etcd, KubeAPIServer}
	if opts != nil && opts.ControllerManager {
		need = append(need, KubeControllerManager)
	}
	for _, name := range need {
		if _, err := Binary(name); err != nil {
			missing(tb, err)
		}
	}
}

// RequireKubectl is Require for tests that also run kubectl.
func RequireKubectl(tb testing.TB) {
	tb.Helper()
	if _, err := Binary(Kubectl); err != nil {
		missing(tb, err)
	}
}

func missing(tb testing.TB, err error) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("kubetest: %v (CI=true: tests must not skip; .ci/run must run `make tools`)", err)
	}
	tb.Skipf("kubetest: %v; run `make tools` (builds them from source, several minutes) or set %s", err, EnvToolsBin)
}

// Start runs a cluster for the duration of tb (see Require for missing
// binaries) in a directory of tb.TempDir. It is stopped by tb.Cleanup; when tb
// failed, the tail of each process's log is written to tb's log.
func Start(tb testing.TB, opts *Options) *Cluster {
	tb.Helper()
	Require(tb, opts)
	c, err := StartProcess(context.Background(), tb.TempDir(), opts)
	if err != nil {
		if errors.Is(err, ErrMissingBinary) {
			missing(tb, err)
		}
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Log(c.Logs())
		}
		c.Stop()
	})
	return c
}

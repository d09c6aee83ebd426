package apiserver_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain runs a re-executed child's role (see reflector_test.go), or else
// the tests; it fails the package if a test leaves goroutines behind (Run must
// stop everything it started).
func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	goleak.VerifyTestMain(m)
}

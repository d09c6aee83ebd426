package apiserver_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind (Run must
// stop everything it started).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

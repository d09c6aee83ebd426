package kubetest_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind (Stop must
// end every process and its waiters).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

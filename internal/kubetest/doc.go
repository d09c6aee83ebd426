// Package kubetest runs a real Kubernetes control plane on loopback for tests
// and for the single-machine drills: an etcd, a kube-apiserver and, when asked,
// a kube-controller-manager (which turns Pods behind a Service into
// EndpointSlices and finalizes deleted namespaces). The binaries are built from
// source by the hack/ tools module (`make tools`) into hack/bin, or found in the
// directory named by CLUSTERMESH_TOOLS_BIN.
//
// There are two entry points:
//
//   - Start(t, opts) for tests: the cluster lives until the test (or
//     benchmark) ends, through t.Cleanup. When the binaries are missing the
//     test is skipped with a message saying how to build them, except under
//     CI=true where a missing binary fails the test: CI must never skip.
//   - StartProcess(ctx, dir, opts) for harnesses that run clusters outside
//     `go test`; the caller owns the returned Cluster and must call Stop.
//
// Every process listens on 127.0.0.1 (or Options.BindAddress) on ports
// picked free at start, writes its log to <dir>/<name>.log, and is killed if
// the process that started it dies (internal/proc), so a crashed
// test leaves nothing running. A Cluster's methods are safe for concurrent use;
// Stop is idempotent.
package kubetest

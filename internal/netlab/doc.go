// Package netlab is the one place that builds throw-away network and kernel
// labs: network namespaces, veths and bridges, addresses, cgroup v2
// directories and bpffs mounts. Root tests and the cluster emulator
// (kind-tests/emulator) both build on it.
//
// It has two layers:
//
//   - Functions taking a context and returning errors (IP, Sysctl, AddNetns,
//     DelNetns, DelLink, InNetns, Handle, CgroupRoot, RemoveCgroupTree,
//     EnsureBPFFS, ...). They own nothing: the caller names every object and
//     removes it. The emulator uses these, with its own run prefix and
//     teardown.
//   - A Lab, for tests: everything it creates is named with a per-run
//     prefix ("cm" and four hex digits, so runs of different packages can
//     share a machine) and removed in the test's Cleanup, even when the test
//     fails or stops half-way: the cleanup removes every namespace, link
//     and cgroup whose name starts with the prefix, not only those it
//     remembers creating. A Lab lives as long as the test that created it;
//     its methods fail the test on error and must be called from the test's
//     goroutine.
package netlab

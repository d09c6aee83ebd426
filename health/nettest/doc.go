// Package nettest holds the network-namespace tests and benchmarks of
// package health: every pool member runs as its own process (the test
// binary re-executed) in its own network namespace on a Linux bridge, and is
// hard-killed or cut off for real. The failover test also drives the eBPF
// datapath of package bpf with real connections. It has no API; the tests
// need root and skip without it.
package nettest

// Package bpf is the eBPF datapath of the mesh: socket-level load balancing of
// global services. cgroup sock_addr programs (connect, sendmsg, recvmsg and
// getpeername, IPv4 and IPv6) rewrite a service VIP:port to a backend chosen
// in the kernel, before any packet exists, and show the VIP back to the
// application for UDP.
//
// [Open] loads the programs (compiled from socklb.c by bpf2go; the objects are
// committed), attaches them to a cgroup and pins maps and links under a
// directory of a bpffs. The pins outlive the process: when the agent exits or
// crashes, connections keep being balanced with the last programmed state, and
// the next Open adopts the pinned maps (their contents are kept) and swaps the
// programs of the pinned links in place, so no connection fails across a
// restart. [Datapath.Close] releases the process's file descriptors and keeps
// the pins; [Datapath.Remove] detaches and unpins everything.
//
// A [Datapath] implements loadbalancer.Datapath and is safe for concurrent
// use: one mutex orders map writes so that a reader in the kernel never sees
// a slot pointing at a backend that is not programmed, and what an update
// replaces is freed only after an RCU grace period, by a background goroutine
// that Open starts and Close or Remove stops (see docs/datapath.md).
//
// [ReadDump] and [NewDebugCommand] read the pinned maps without an agent, for
// `clustermesh-agent bpf services`.
package bpf

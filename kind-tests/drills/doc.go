// Package drills holds the mesh's failover drills: scripted failures on an
// emulated mesh (package harness), each with a pass/fail condition and a
// measured figure. The tests of this package run them on two clusters of two
// nodes; the demo command runs a subset with commentary.
//
// A drill is a function taking an Env (a running mesh with an echo service
// deployed in every cluster) and returning an error when its condition does
// not hold. Drills run one after the other on the same mesh and leave it as
// they found it unless documented (NodeDeath leaves a node dead, Disconnect
// leaves the clusters disconnected), so the order of Sequence matters.
//
// Traffic comes from probe processes in a node's namespace and cgroup,
// connecting to the service's ClusterIP again and again; the answering pod's
// name tells which cluster served each attempt. Figures are taken from the
// probes' per-attempt timestamps.
package drills

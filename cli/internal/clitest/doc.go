// Package clitest runs emulated clusters for the CLI's end-to-end tests: a
// real kube-apiserver per cluster (internal/kubetest), one kubeconfig with a
// context per cluster, and, on demand, the cluster's clustermesh-apiserver and
// an agent run in-process from the Secrets enable created, as the kubelet
// would run the Deployment and DaemonSet (Secrets written to files, refreshed
// while they run).
//
// Everything an Env starts is stopped by the test's Cleanup. It is also the
// documented hook for harnesses that run the processes themselves: what
// RunProcesses does with mesh.Cluster.WriteSecretDir and WriteClustersDir is
// what a harness playing the kubelet must do.
package clitest

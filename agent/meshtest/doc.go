// Package meshtest runs a mesh of real clusters' stores for the agent's
// integration tests and benchmarks: one embedded etcd per cluster (mutual
// TLS, certificates from a throw-away mesh CA), a kvstore.Writer per cluster
// playing that cluster's clustermesh-apiserver, and per cluster a TCP relay
// in front of the etcd so a test can cut agents off a store while its writer
// keeps writing.
//
// Everything a Mesh starts is stopped by the test's cleanup.
package meshtest

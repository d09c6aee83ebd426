// Package e2e tests the multicluster plugin (coredns/multicluster, a module
// of its own) the way clusters run it: in CoreDNS built from source from
// hack/kind/coredns, the build the kind node image ships, against a real
// kube-apiserver, queried over UDP. It lives in the main module so that
// `make test` runs it.
package e2e

//go:build tools

// Package tools pins the Kubernetes commands this module builds, so `go mod
// tidy` keeps their dependencies. The Makefile builds them with `go build`.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

package bpf

// The objects are committed; regenerate with `make generate` (Debian 12's
// clang 14). -target bpfel yields one little-endian object for every
// little-endian GOARCH; flags keep the output independent of the checkout path.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -no-global-types socklb socklb.c -- -O2 -g -Wall -Werror -Iinclude

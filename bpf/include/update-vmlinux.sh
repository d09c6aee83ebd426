#!/usr/bin/env bash
# update-vmlinux.sh rewrites vmlinux.h: the kernel types the socket
# load-balancer programs use, cut from the running kernel's BTF. It is run by
# hand when a new kernel type is needed, never by `go generate`, so the
# generated objects depend only on committed inputs and not on the kernel of
# the machine that regenerates them.
set -euo pipefail
cd "$(dirname "$0")"
full=$(mktemp)
trap 'rm -f "$full"' EXIT
bpftool btf dump file "${1:-/sys/kernel/btf/vmlinux}" format c >"$full"

{
	echo "/* Trimmed from the BTF of Linux $(uname -r) by update-vmlinux.sh. */"
	echo "#ifndef __VMLINUX_H__"
	echo "#define __VMLINUX_H__"
	echo
	grep -E '^typedef (signed char|unsigned char|short int|short unsigned int|int|unsigned int|long long int|long long unsigned int) __[su](8|16|32|64);$' "$full"
	grep -E '^typedef __u(16|32) __(be16|be32|wsum);$' "$full"
	echo
	# Named blocks, then the anonymous enums holding the given constants.
	awk '
	BEGIN {
		want["struct bpf_sock {"] = 1
		want["struct bpf_sock_addr {"] = 1
		want["enum bpf_map_type {"] = 1
		anon["BPF_ANY = 0,"] = 1
		anon["BPF_F_NO_PREALLOC = 1,"] = 1
		anon["BPF_LOCAL_STORAGE_GET_F_CREATE = 1,"] = 1
	}
	/^(struct|enum)( [a-z_0-9]+)? \{$/ { inblk = 1; buf = ""; keep = ($0 in want) }
	inblk {
		buf = buf $0 "\n"
		line = $0; gsub(/^\t+/, "", line)
		if (line in anon) keep = 1
	}
	inblk && /^};$/ { inblk = 0; if (keep) printf "%s\n", buf }
	' "$full"
	echo "#endif /* __VMLINUX_H__ */"
} >vmlinux.h

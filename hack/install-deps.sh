#!/usr/bin/env bash
# Installs on a Debian 12 machine everything the tests need: Debian packages
# (clang for the eBPF objects, bird2 and gobgpd for the BGP interop tests,
# iptables and ipset for the datapath benchmark baselines), staticcheck, and the
# Kubernetes control plane built from source into hack/bin. Each step is
# skipped when its result is already present, so `make test` runs it every
# time at almost no cost.
#
# The control plane build (about 7 minutes cold) is cached under
# $CLUSTERMESH_CACHE (default /var/cache/clustermesh), keyed by the hash of
# hack/'s inputs, so a fresh clone on the same machine restores it at once.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin
step() { printf -- '--- %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

pkgs=(clang llvm libbpf-dev bpftool bird2 gobgpd iptables ipset nftables iproute2 util-linux make git ca-certificates)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	step "apt packages: ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: root is needed to install ${missing[*]} (run with sudo)" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v staticcheck >/dev/null; then
	step "staticcheck"
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

cache=${CLUSTERMESH_CACHE:-/var/cache/clustermesh}
key=$(cat hack/go.mod hack/go.sum hack/Makefile hack/cmd/*/*.go | sha256sum | cut -c1-16)
# Restore when the binaries are missing or older than hack/'s inputs (a pull
# that changed hack/): the cache entry for these inputs is what make would
# build.
if ! make -s -q -C hack 2>/dev/null && [ -x "$cache/tools-$key/kube-apiserver" ]; then
	step "kubernetes control plane: restored from $cache/tools-$key"
	mkdir -p hack/bin && cp -p "$cache/tools-$key"/* hack/bin/ && touch hack/bin/*
fi
if ! make -s -q -C hack 2>/dev/null; then
	step "kubernetes control plane from source (hack/; about 7 minutes on a cold cache)"
	make -C hack
fi
if [ ! -d "$cache/tools-$key" ] && mkdir -p "$cache" 2>/dev/null; then
	mkdir -p "$cache/tools-$key.tmp" && cp -p hack/bin/{kube-apiserver,kube-controller-manager,kubectl,etcd} "$cache/tools-$key.tmp/" && mv "$cache/tools-$key.tmp" "$cache/tools-$key"
fi

#!/usr/bin/env bash
# Builds a Debian bookworm root filesystem as a tarball with mmdebstrap, for
# `docker import` (no debian image can be pulled: no registry is reachable).
# Called by build-node-image.sh, which caches the result keyed by the hash of
# this file, so changing a package list here rebuilds it.
#
#   rootfs.sh node  OUT.tar   # the kind node: systemd, containerd, runc, CNI
#                             # plugins and the tools kind's base image has
#   rootfs.sh proxy OUT.tar   # kube-proxy's image: iptables and conntrack
set -euo pipefail

suite=bookworm
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security

# The node: kind's base image package list (images/base/Dockerfile in kind's
# module), with containerd, runc and the CNI plugins (ptp, host-local,
# loopback, portmap) from Debian instead of kind's own builds.
node_pkgs=(
	systemd systemd-sysv dbus
	conntrack iptables nftables iproute2 ethtool util-linux mount kmod
	libseccomp2 pigz e2fsprogs bash ca-certificates curl jq procps
	containerd runc containernetworking-plugins
)
# kube-proxy: iptables in both its legacy and nft flavours, conntrack to
# flush UDP entries.
proxy_pkgs=(iptables conntrack kmod)

case "${1:-}" in
node) pkgs=("${node_pkgs[@]}") ;;
proxy) pkgs=("${proxy_pkgs[@]}") ;;
*) echo "usage: $0 node|proxy OUT.tar" >&2; exit 2 ;;
esac
out=${2:?usage: $0 node|proxy OUT.tar}
# The system's tools only: mmdebstrap runs its python helper (mmtarfilter)
# once per package, and a python3 shim (pyenv) earlier in PATH makes that
# minutes slower.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
command -v mmdebstrap >/dev/null || { echo "rootfs.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

# minbase plus the packages; no documentation or apt lists in the image.
mmdebstrap --variant=minbase --mode=root --format=tar \
	--include="$(IFS=,; echo "${pkgs[*]}")" \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
	"$suite" "$out.tmp" \
	"deb $mirror $suite main" \
	"deb $mirror $suite-updates main" \
	"deb $security $suite-security main"
mv "$out.tmp" "$out"

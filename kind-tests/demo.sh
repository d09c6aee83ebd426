#!/usr/bin/env bash
# Runs the clustermesh demo: two emulated clusters on this machine, joined
# with the clustermesh CLI, a global service, traffic, a failover, a table of
# timings, then teardown. Needs root (network namespaces, cgroups, eBPF) and
# Go (/usr/local/go/bin is searched too). The first run compiles Kubernetes
# from source: several minutes.
#
#   sudo kind-tests/demo.sh          # or: sudo make demo
#   sudo kind-tests/demo.sh -keep    # leave the clusters up until Ctrl-C
#
# If a run is killed hard, remove its leftovers with:
#   sudo go run ./kind-tests/cmd/cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	exec sudo -E "$0" "$@"
fi
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
command -v go >/dev/null || { echo "demo: Go not found (install Go 1.26 to /usr/local/go)" >&2; exit 1; }
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
echo "==> Compiling the demo driver"
go build -o "$bin/demo" ./kind-tests/cmd/demo
"$bin/demo" "$@"

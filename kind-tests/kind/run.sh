#!/usr/bin/env bash
# make kind-drills: the failover drills on two real kind clusters, built and
# run entirely on this machine (root).
#
#   make kind-drills            # create, drill, delete
#   KEEP=1 make kind-drills     # keep the clusters afterwards (make kind-down)
#   KIND_DRILLS_RUN='TestKindDrills/^Disconnect$' make kind-drills
#                               # only the drills that match (go test -run);
#                               # setup always runs, disable only without it
#
# Steps: start a Docker engine if none runs (hack/kind/docker.sh), build the
# CLI and the images at one version (make build images), build or restore the
# kind node image (make kind-image), create PREFIX-c1 and PREFIX-c2 (two nodes
# each; hack/kind/clusters.sh), load the images into both, then run the drills
# (go test ./kind-tests/kindenv): enable and connect with the real CLI, the
# echo service in both clusters marked global, and every drill of
# kind-tests/drills.Sequence, the same definitions the emulator runs. The
# figures table is printed and kept in $TMPDIR/clustermesh-kind-drills-report.txt.
# Then clustermesh disable on the first cluster (TestKindDisable).
# Teardown (on success, failure and Ctrl-C) deletes the clusters unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PWD/hack/bin:$PATH:/usr/local/go/bin:$HOME/go/bin
step() { printf -- '--- kind-drills: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
[ "$(id -u)" -eq 0 ] || { echo "kind-drills: root is needed (Docker, kind, the agents' eBPF)" >&2; exit 1; }

export CLUSTERMESH_KIND_PREFIX=${CLUSTERMESH_KIND_PREFIX:-cmdrill}
export CLUSTERMESH_KIND_DIR=${CLUSTERMESH_KIND_DIR:-$PWD/bin/kind}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
report=${TMPDIR:-/tmp}/clustermesh-kind-drills-report.txt
rm -f "$report"
t0=$(date +%s)

step "docker engine"
bash hack/kind/docker.sh

step "CLI and images at version $version"
make -s build images VERSION="$version"

step "kind node image"
s=$(date +%s)
make -s kind-image
image_s=$(($(date +%s) - s))

teardown() {
	local rc=$?
	if [ "${KEEP:-0}" = 1 ]; then
		step "KEEP=1: clusters $CLUSTERMESH_KIND_PREFIX-c1 and -c2 kept (make kind-down CLUSTERMESH_KIND_PREFIX=$CLUSTERMESH_KIND_PREFIX)"
	else
		step "teardown"
		bash hack/kind/clusters.sh down || true
	fi
	exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

step "clusters"
s=$(date +%s)
bash hack/kind/clusters.sh up
clusters_s=$(($(date +%s) - s))

step "loading the images into both clusters"
for c in "$CLUSTERMESH_KIND_PREFIX-c1" "$CLUSTERMESH_KIND_PREFIX-c2"; do
	for img in bin/images/*-"$version".tar; do
		kind load image-archive "$img" --name "$c" >/dev/null
	done
done

# kindtest TEST TIMEOUT runs one test of kind-tests/kindenv on the clusters.
kindtest() {
	CLUSTERMESH_KIND=1 CLUSTERMESH_IMAGE_TAG="$version" CLUSTERMESH_CLI=$PWD/bin/clustermesh \
		go test -count=1 -timeout "$2" -v -run "$1" ./kind-tests/kindenv/
}

step "drills"
set +e
kindtest "${KIND_DRILLS_RUN:-TestKindDrills}" 30m
rc=$?
set -e
nodes="$(kind get nodes --name "$CLUSTERMESH_KIND_PREFIX-c1") $(kind get nodes --name "$CLUSTERMESH_KIND_PREFIX-c2")"
# shellcheck disable=SC2086
mem=$(docker stats --no-stream --format '{{.MemUsage}}' $nodes 2>/dev/null |
	awk '{v=$1; if (v ~ /GiB$/) {sub(/GiB/,"",v); v*=1024} else {sub(/MiB/,"",v)} s+=v} END {printf "%.0f MiB", s}')
echo "kind: node image ${image_s}s (build or cache), two clusters created in ${clusters_s}s, memory of the 4 nodes with the mesh ${mem}, total $(($(date +%s) - t0))s" >>"$report"

# Last, as it removes the mesh from the first cluster: clustermesh disable,
# checked on the nodes from the host (bpftool, nsenter).
if [ -z "${KIND_DRILLS_RUN:-}" ]; then
	step "disable"
	set +e
	kindtest TestKindDisable 15m
	drc=$?
	set -e
	[ "$rc" -ne 0 ] || rc=$drc
fi
step "figures"
cat "$report"
exit $rc

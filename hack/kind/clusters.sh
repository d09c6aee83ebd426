#!/usr/bin/env bash
# Creates and deletes the two kind clusters the mesh runs on, from the node
# image built here (build-node-image.sh).
#
#   bash hack/kind/clusters.sh up     # PREFIX-c1 (control plane + worker), PREFIX-c2 (control plane + worker)
#   bash hack/kind/clusters.sh down   # delete them
#   bash hack/kind/clusters.sh clean  # delete every leftover: clusters named cm*-cN
#                                     # or PREFIX-cN, build containers, the kind
#                                     # network, a /lib/modules Docker created
#
# PREFIX is $CLUSTERMESH_KIND_PREFIX (default cm): a run that must not collide
# with another sets its own. Kubeconfigs go to
# $CLUSTERMESH_KIND_DIR/PREFIX-c1.kubeconfig (default bin/kind/ in the
# repository).
#
# The clusters have disjoint pod and service CIDRs, no default CNI (kindnet
# cannot be built here: each node writes a ptp + host-local configuration for
# its own pod CIDR, see node/cni-config.sh) and kubelets that accept this
# machine's cgroup v1. Pods on different nodes of PREFIX-c1 reach each other
# once the mesh agents route the cluster's node pod CIDRs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. hack/kind/lib.sh

prefix=${CLUSTERMESH_KIND_PREFIX:-cm}
# Docker creates an empty /lib/modules on the host when kind bind-mounts it;
# this marker says we did, so teardown removes it.
modules_marker=/run/clustermesh-kind-created-lib-modules

# cluster NAME POD_CIDR SERVICE_CIDR WORKERS: kind's configuration.
config() {
	local workers=$4 i
	cat <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: $1
networking:
  disableDefaultCNI: true
  podSubnet: $2
  serviceSubnet: $3
nodes:
- role: control-plane
YAML
	for ((i = 0; i < workers; i++)); do echo "- role: worker"; done
	cat <<'YAML'
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  # kubelet 1.36 refuses cgroup v1 unless told; these hosts' Docker uses v1.
  failCgroupV1: false
YAML
}

c1=$prefix-c1
c2=$prefix-c2

delete() {
	local c
	for c in "$@"; do
		# grep reads the whole list: with -q it would exit at the first
		# match and, under pipefail, kind's SIGPIPE would skip the delete
		# when other clusters (another run's) are listed after it.
		if kind get clusters 2>/dev/null | grep -x "$c" >/dev/null; then
			step "deleting cluster $c"
			kind delete cluster --name "$c" >/dev/null 2>&1 || true
		fi
		rm -f "$CLUSTERMESH_KIND_DIR/$c.kubeconfig" "$CLUSTERMESH_KIND_DIR/$c.yaml"
	done
	# The network and /lib/modules go when no kind cluster is left.
	if [ -z "$(kind get clusters 2>/dev/null)" ]; then
		docker network rm kind >/dev/null 2>&1 || true
		if [ -f "$modules_marker" ] && [ -d /lib/modules ] && [ -z "$(ls -A /lib/modules)" ]; then
			rmdir /lib/modules && rm -f "$modules_marker"
		fi
	fi
}

up() {
	bash hack/kind/build-node-image.sh
	mkdir -p "$CLUSTERMESH_KIND_DIR"
	[ -e /lib/modules ] || touch "$modules_marker"
	# A failed or interrupted run leaves nothing behind.
	trap 'delete "$c1" "$c2"' EXIT
	trap 'exit 130' INT TERM
	create "$c1" 10.1.0.0/16 10.101.0.0/16 1
	create "$c2" 10.2.0.0/16 10.102.0.0/16 1
	trap - EXIT
	step "clusters up; kubeconfigs:"
	echo "  $CLUSTERMESH_KIND_DIR/$c1.kubeconfig"
	echo "  $CLUSTERMESH_KIND_DIR/$c2.kubeconfig"
	docker stats --no-stream --format '  {{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}' $(kind get nodes --name "$c1") $(kind get nodes --name "$c2")
}

# create NAME POD_CIDR SERVICE_CIDR WORKERS
create() {
	local kc=$CLUSTERMESH_KIND_DIR/$1.kubeconfig cfg=$CLUSTERMESH_KIND_DIR/$1.yaml s
	delete "$1"
	step "creating cluster $1 (pods $2, services $3, $4 worker(s))"
	s=$(date +%s)
	config "$@" >"$cfg"
	kind create cluster --image "$NODE_IMAGE" --config "$cfg" --kubeconfig "$kc" --wait 5m
	kubectl --kubeconfig "$kc" wait --for=condition=Ready nodes --all --timeout=5m >/dev/null
	# The system pods too (CoreDNS needs the CNI configuration; kube-proxy
	# fails when the host's inotify limits are too low).
	kubectl --kubeconfig "$kc" -n kube-system wait --for=condition=Ready pods --all --timeout=3m >/dev/null ||
		{ kubectl --kubeconfig "$kc" get pods -A >&2; die "$1: system pods not Ready"; }
	# kind's default StorageClass "standard" needs a provisioner whose image
	# no registry can supply here: claims of it would stay Pending. Without
	# a default class, clustermesh enable keeps its store on a node-local
	# volume (--store-storage auto).
	kubectl --kubeconfig "$kc" delete storageclass standard --ignore-not-found >/dev/null
	kubectl --kubeconfig "$kc" get nodes -o custom-columns='NODE:.metadata.name,STATUS:.status.conditions[?(@.type=="Ready")].status,POD_CIDR:.spec.podCIDR'
	step "cluster $1 created in $(($(date +%s) - s))s"
}

case "${1:-}" in
up) up ;;
down) delete "$c1" "$c2" ;;
clean)
	command -v docker >/dev/null && docker info >/dev/null 2>&1 || exit 0
	ensure_kind
	# The project's clusters: PREFIX-cN, PREFIX starting with "cm" (cm for
	# kind-up, cmdrill for kind-drills, or a run's own).
	delete $(kind get clusters 2>/dev/null | grep -E "^(cm[a-z0-9]*|$prefix)-c[0-9]+$" || true)
	docker ps -aq --filter name=clustermesh-kind-build- | xargs -r docker rm -f >/dev/null
	rm -rf /tmp/clustermesh-kind-build-*
	;;
*)
	echo "usage: $0 up|down|clean" >&2
	exit 2
	;;
esac

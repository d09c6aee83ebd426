# Shared settings of the hack/kind scripts (sourced, not run). Run from the
# repository root.
#
# Versions: Kubernetes is the version hack/Makefile builds; the image tags
# are the ones kubeadm of that version asks for (kubeadm config images list).
KIND_VERSION=v0.33.0
KUBE_VERSION=$(sed -n 's/^KUBE_VERSION *:= *//p' hack/Makefile)
ETCD_TAG=3.6.8-0       # kubeadm v1.36's etcd tag; the image holds hack/'s etcd build
COREDNS_TAG=v1.14.2    # hack/kind/coredns/go.mod builds this version
PAUSE_TAGS=(3.10.2 3.10) # kubeadm's tag, and the sandbox image in containerd's config
REGISTRY=registry.k8s.io

export PATH=$PWD/hack/bin:$PATH:/usr/local/go/bin:/usr/sbin:/sbin
# The Go module proxy only: no direct fetch that would fail slowly here.
export GOPROXY=${GOPROXY_KIND:-https://proxy.golang.org}
export GOFLAGS="-mod=mod -buildvcs=false"

CACHE=${CLUSTERMESH_CACHE:-/var/cache/clustermesh}
# Where kind-up writes the clusters' kubeconfigs (cm-c1.kubeconfig, ...).
CLUSTERMESH_KIND_DIR=${CLUSTERMESH_KIND_DIR:-$PWD/bin/kind}
KIND_MODULE_DIR=$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION

step() { printf -- '--- %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
die() { printf 'kind: %s\n' "$*" >&2; exit 1; }

# hash FILE... prints a 16-hex-digit hash of the files' contents.
hash() { cat "$@" | sha256sum | cut -c1-16; }

# The cache keys: each slow result is stored under a directory named after
# the hash of exactly what it is built from.
#  - node binaries: hack/'s inputs (the key install-deps.sh uses for the
#    control plane, which the images reuse from hack/bin);
#  - CoreDNS: its module and the multicluster plugin's module and sources
#    (coredns/e2e's test computes the same key to share the build);
#  - root filesystems: rootfs.sh (package lists);
#  - images and node image: all of the above and the node's files.
KEY_BIN=$(hash hack/go.mod hack/go.sum hack/Makefile hack/cmd/*/*.go)
KEY_COREDNS=$(hash hack/kind/coredns/go.mod hack/kind/coredns/go.sum hack/kind/coredns/main.go coredns/multicluster/go.mod coredns/multicluster/go.sum $(find coredns/multicluster -maxdepth 1 -name '*.go' ! -name '*_test.go' | LC_ALL=C sort))
KEY_ROOTFS=$(hash hack/kind/rootfs.sh)
KEY_NODE=$( { echo "$KIND_VERSION $KUBE_VERSION $ETCD_TAG $COREDNS_TAG ${PAUSE_TAGS[*]}"; echo "$KEY_BIN $KEY_COREDNS $KEY_ROOTFS";
	cat hack/kind/lib.sh hack/kind/build-node-image.sh hack/kind/runc-wrapper/main.go hack/kind/node/*; } | sha256sum | cut -c1-16)
NODE_IMAGE=clustermesh/kind-node:$KUBE_VERSION-$KEY_NODE

# ensure_kind puts the kind binary into hack/bin when it is missing or
# another version: from $CACHE/kind-bin-VERSION, else built from the Go
# module proxy (about 2 minutes cold) and cached there.
ensure_kind() {
	if [ -x hack/bin/kind ] && hack/bin/kind version 2>/dev/null | grep -q "^kind $KIND_VERSION "; then
		return
	fi
	local bin=$PWD/hack/bin cached=$CACHE/kind-bin-$KIND_VERSION/kind
	mkdir -p "$bin"
	if [ -x "$cached" ]; then
		cp -p "$cached" "$bin/kind"
		return
	fi
	step "kind $KIND_VERSION from the Go module proxy"
	(cd /tmp && GOBIN=$bin go install "sigs.k8s.io/kind@$KIND_VERSION") || die "could not build kind $KIND_VERSION"
	if mkdir -p "${cached%/*}" 2>/dev/null; then cp -p "$bin/kind" "$cached.tmp" && mv "$cached.tmp" "$cached"; fi
}

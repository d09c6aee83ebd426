#!/usr/bin/env bash
# Builds the kind node image on this machine, or restores it from the cache.
# No registry is reachable, so `kind build node-image` (which pulls etcd,
# CoreDNS, pause...) cannot be used: this script assembles the image the way
# kind's own builder does, from parts built here.
#
#   bash hack/kind/build-node-image.sh                # build or restore
#   bash hack/kind/build-node-image.sh --print-image  # the image's name
#
# Steps (each result cached under $CLUSTERMESH_CACHE, default
# /var/cache/clustermesh, in a directory named after the hash of its inputs,
# see lib.sh):
#  1. Docker engine (docker.sh) and the kind binary (hack/bin/kind);
#  2. Kubernetes: the control plane from hack/ (install-deps.sh) and the node
#     binaries (make -C hack node)              -> kind-nodebin-KEY/
#  3. CoreDNS with kubeadm's plugins only          -> kind-coredns-KEY/
#  4. Debian root filesystems (rootfs.sh; built in the background from the
#     start, beside the Go builds)                 -> kind-rootfs-KEY/
#  5. the images kubeadm wants: one binary on an empty base each, kube-proxy
#     on a Debian one with iptables, pause compiled statically from
#     Kubernetes' source                           -> kind-KEY/images/
#  6. the base image (root filesystem + kind's base files + node/), then the
#     node image: base + kubeadm, kubelet, kubectl, /kind/version and the
#     images imported into containerd's k8s.io namespace, committed
#                                                  -> kind-KEY/node.tar
# A second run finds the image in Docker or `docker load`s kind-KEY/node.tar.
set -euo pipefail
cd "$(dirname "$0")/../.."
. hack/kind/lib.sh

if [ "${1:-}" = --print-image ]; then
	echo "$NODE_IMAGE"
	exit 0
fi
[ "$(id -u)" -eq 0 ] || die "building the node image needs root (Docker, mmdebstrap, the cache)"

start=$(date +%s)
times=()
# timed NAME CMD...: runs CMD and records how long it took.
timed() {
	local name=$1 s
	shift
	s=$(date +%s)
	"$@"
	times+=("$name $(($(date +%s) - s))s")
}
report() { step "node image $NODE_IMAGE ready in $(($(date +%s) - start))s${times:+ (${times[*]})}"; }

bash hack/kind/docker.sh
ensure_kind

if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
	report
	exit 0
fi
out=$CACHE/kind-$KEY_NODE
if [ -f "$out/node.tar" ]; then
	step "restoring $NODE_IMAGE from $out/node.tar"
	timed restore docker load -q -i "$out/node.tar"
	report
	exit 0
fi

# Everything temporary is named with this run's id and removed on success,
# failure and Ctrl-C.
run=clustermesh-kind-build-$$
work=$(mktemp -d "/tmp/$run.XXXXXX")
cleanup() {
	[ -z "${rootfs_pid:-}" ] || kill -- "-$rootfs_pid" 2>/dev/null || true
	docker rm -f "$run" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$CACHE"

# quiet CMD...: runs CMD with its output in $work/quiet.log, shown only when
# it fails (the legacy builder's deprecation notice is noise here).
quiet() {
	"$@" >"$work/quiet.log" 2>&1 || { cat "$work/quiet.log" >&2; return 1; }
}

# save_dir DIR: moves $DIR.tmp to DIR, so a cache entry is complete or absent.
save_dir() { rm -rf "$1" && mv "$1.tmp" "$1"; }

# 2. Kubernetes binaries.
kube_binaries() {
	bash hack/install-deps.sh # the control plane into hack/bin (cached)
	local dir=$CACHE/kind-nodebin-$KEY_BIN bins=(kubelet kubeadm kube-proxy kube-scheduler)
	if [ -x "$dir/kubelet" ]; then
		step "node binaries: restored from $dir"
		cp -p "$dir"/* hack/bin/ && touch "${bins[@]/#/hack/bin/}"
	fi
	if ! make -s -q -C hack node 2>/dev/null; then
		step "node binaries from source (make -C hack node; about 7 minutes cold)"
		nice -n 10 make -C hack node
	fi
	if [ ! -d "$dir" ]; then
		mkdir -p "$dir.tmp" && cp -p "${bins[@]/#/hack/bin/}" "$dir.tmp/" && save_dir "$dir"
	fi
}

# 3. CoreDNS.
coredns() {
	local dir=$CACHE/kind-coredns-$KEY_COREDNS
	if [ ! -x "$dir/coredns" ]; then
		step "CoreDNS $COREDNS_TAG from its Go module (about 8 minutes cold)"
		mkdir -p "$dir.tmp"
		(cd hack/kind/coredns && CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags '-s -w' -o "$dir.tmp/coredns" .)
		save_dir "$dir"
	fi
	cp -p "$dir/coredns" "$work/coredns"
}

# 4. Root filesystems, imported as images.
# rootfs_start starts building the root filesystems in the background when
# they are not cached: mmdebstrap mostly downloads and unpacks, so it runs
# beside the Go builds. In a process group of its own, so that cleanup stops
# all of it.
rootfs_dir=$CACHE/kind-rootfs-$KEY_ROOTFS
rootfs_pid=
rootfs_start() {
	[ ! -f "$rootfs_dir/node.tar" ] || return 0
	step "Debian root filesystems with mmdebstrap, in the background (log $work/rootfs-*.log)"
	command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
	mkdir -p "$rootfs_dir.tmp"
	setsid nice -n 10 bash -c '
		bash hack/kind/rootfs.sh proxy "$1/proxy.tar" >"$2/rootfs-proxy.log" 2>&1 & proxy=$!
		bash hack/kind/rootfs.sh node "$1/node.tar" >"$2/rootfs-node.log" 2>&1 || exit 1
		wait "$proxy"' rootfs "$rootfs_dir.tmp" "$work" &
	rootfs_pid=$!
}

# rootfs waits for the root filesystems and imports them as images.
rootfs() {
	if [ -n "$rootfs_pid" ]; then
		if ! wait "$rootfs_pid"; then
			tail -n 20 "$work"/rootfs-*.log >&2
			die "rootfs.sh failed"
		fi
		rootfs_pid=
		save_dir "$rootfs_dir"
	fi
	docker image inspect "clustermesh/kind-rootfs:$KEY_ROOTFS" >/dev/null 2>&1 ||
		docker import "$rootfs_dir/node.tar" "clustermesh/kind-rootfs:$KEY_ROOTFS" >/dev/null
	docker image inspect "clustermesh/kind-proxy-rootfs:$KEY_ROOTFS" >/dev/null 2>&1 ||
		docker import "$rootfs_dir/proxy.tar" "clustermesh/kind-proxy-rootfs:$KEY_ROOTFS" >/dev/null
}

# image NAME FROM BINARY [ENTRYPOINT] [USER]: builds NAME from FROM with
# BINARY in /usr/local/bin (or at ENTRYPOINT), with a PATH so that kubeadm's
# manifests' "command: kube-apiserver" resolves.
image() {
	local name=$1 from=$2 bin=$3 entry=${4:-/usr/local/bin/$(basename "$3")} user=${5:-}
	local ctx
	ctx=$(mktemp -d "$work/image.XXXXXX")
	cp -p "$bin" "$ctx/"
	{
		echo "FROM $from"
		echo "COPY $(basename "$bin") $entry"
		echo "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"
		[ -z "$user" ] || echo "USER $user"
		echo "ENTRYPOINT [\"$entry\"]"
	} >"$ctx/Dockerfile"
	quiet docker build -t "$name" "$ctx"
}

# 5. The images kubeadm wants, saved as docker archives.
images() {
	local dir=$out/images
	[ -f "$dir/pause.tar" ] && return
	step "images kubeadm $KUBE_VERSION wants"
	local kube
	kube=$(cd hack && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
	# pause: as Kubernetes' build/pause/Makefile compiles it.
	gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_TAGS[0]}-clustermesh" -o "$work/pause" "$kube/build/pause/linux/pause.c"
	mkdir -p "$dir.tmp"
	local c
	for c in kube-apiserver kube-controller-manager kube-scheduler; do
		image "$REGISTRY/$c:$KUBE_VERSION" scratch "hack/bin/$c"
		docker save -o "$dir.tmp/$c.tar" "$REGISTRY/$c:$KUBE_VERSION"
	done
	image "$REGISTRY/kube-proxy:$KUBE_VERSION" "clustermesh/kind-proxy-rootfs:$KEY_ROOTFS" hack/bin/kube-proxy
	docker save -o "$dir.tmp/kube-proxy.tar" "$REGISTRY/kube-proxy:$KUBE_VERSION"
	image "$REGISTRY/etcd:$ETCD_TAG" scratch hack/bin/etcd
	docker save -o "$dir.tmp/etcd.tar" "$REGISTRY/etcd:$ETCD_TAG"
	# CoreDNS runs as root (no USER) to bind port 53.
	image "$REGISTRY/coredns/coredns:$COREDNS_TAG" scratch "$work/coredns" /coredns
	docker save -o "$dir.tmp/coredns.tar" "$REGISTRY/coredns/coredns:$COREDNS_TAG"
	image "$REGISTRY/pause:${PAUSE_TAGS[0]}" scratch "$work/pause" /pause 65535:65535
	local t refs=()
	for t in "${PAUSE_TAGS[@]}"; do
		docker tag "$REGISTRY/pause:${PAUSE_TAGS[0]}" "$REGISTRY/pause:$t"
		refs+=("$REGISTRY/pause:$t")
	done
	docker save -o "$dir.tmp/pause.tar" "${refs[@]}"
	save_dir "$dir"
}

# 6a. The base image: the node's root filesystem, kind's base files, ours.
base_image() {
	local ctx=$work/base root=$work/base/root src=$KIND_MODULE_DIR/images/base/files
	[ -d "$src" ] || (cd /tmp && go mod download sigs.k8s.io/kind@"$KIND_VERSION")
	mkdir -p "$root"/{usr/local/bin,usr/local/sbin,kind,etc/containerd,etc/default,etc/sysctl.d,etc/systemd/system}
	cp -r "$src/kind/." "$root/kind/"
	cp "$src/usr/local/bin/"* "$root/usr/local/bin/"
	cp "$src/etc/crictl.yaml" "$root/etc/"
	cp "$src/etc/default/kubelet" "$root/etc/default/"
	cp "$src/etc/sysctl.d/"* "$root/etc/sysctl.d/"
	cp -r "$src/etc/systemd/system/." "$root/etc/systemd/system/"
	rm -f "$root/etc/systemd/system/containerd-fuse-overlayfs.service"
	cp hack/kind/node/containerd.toml "$root/etc/containerd/config.toml"
	cp hack/kind/node/cni-config.sh "$root/kind/bin/"
	cp hack/kind/node/clustermesh-cni.service hack/kind/node/clustermesh-bpffs.service "$root/etc/systemd/system/"
	(cd hack && CGO_ENABLED=0 go build -trimpath -o "$root/usr/local/sbin/clustermesh-runc" ./kind/runc-wrapper)
	chmod -R u+w,go+rX "$root" # the module cache's files are read-only
	cp hack/kind/node/Dockerfile "$ctx/"
	quiet docker build --build-arg "ROOTFS=clustermesh/kind-rootfs:$KEY_ROOTFS" -t "clustermesh/kind-base:$KEY_NODE" "$ctx"
}

# 6b. The node image, as kind's builder makes it: run the base image
# sleeping, add the binaries, import the images with the node's own
# containerd, commit.
node_image() {
	docker run -d --name "$run" --security-opt seccomp=unconfined --entrypoint=sleep "clustermesh/kind-base:$KEY_NODE" infinity >/dev/null
	local b
	for b in kubeadm kubelet kubectl; do docker cp "hack/bin/$b" "$run:/usr/bin/$b"; done
	echo "$KUBE_VERSION" | docker exec -i "$run" sh -c 'cat >/kind/version'
	docker exec -d "$run" sh -c 'containerd >/var/log/containerd-build.log 2>&1'
	for _ in $(seq 60); do docker exec "$run" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
	local tar
	for tar in "$out"/images/*.tar; do
		docker exec -i "$run" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
			--all-platforms --no-unpack --digests - <"$tar" >/dev/null
	done
	docker exec "$run" ctr --namespace=k8s.io images list -q | grep -v '^sha256:' | sed 's/^/  /'
	docker exec "$run" sh -c 'pkill containerd; while pgrep containerd >/dev/null; do sleep 0.2; done; rm -f /var/log/containerd-build.log'
	docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' --change 'CMD []' \
		"$run" "$NODE_IMAGE" >/dev/null
	docker rm -f "$run" >/dev/null
}

rootfs_start
timed kube-binaries kube_binaries
timed coredns coredns
timed rootfs-wait rootfs
mkdir -p "$out"
timed images images
step "base image"
timed base-image base_image
step "node image $NODE_IMAGE"
timed node-image node_image
step "saving $out/node.tar"
timed save docker save -o "$out/node.tar.tmp" "$NODE_IMAGE"
mv "$out/node.tar.tmp" "$out/node.tar"
# The intermediate tags; their layers stay as long as the node image uses them.
docker rmi "clustermesh/kind-base:$KEY_NODE" >/dev/null 2>&1 || true
# Older node images (1.1 GB each) go: from Docker unless a container uses
# them, from the cache but for the two newest (another checkout may still use
# the previous one).
docker images --format '{{.Repository}}:{{.Tag}}' clustermesh/kind-node | grep -vx "$NODE_IMAGE" |
	xargs -r docker rmi >/dev/null 2>&1 || true
ls -dt "$CACHE"/kind-[0-9a-f]*/ 2>/dev/null | grep -E '/kind-[0-9a-f]{16}/$' | tail -n +3 | xargs -r rm -rf
report

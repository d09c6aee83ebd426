#!/usr/bin/env bash
# Makes sure a Docker engine runs that can start kind's privileged node
# containers on this machine, and says exactly what is missing when it cannot.
# Every script that needs Docker calls this one; it is idempotent and quick
# when an engine already runs.
#
#   bash hack/kind/docker.sh          # ensure an engine (root)
#   bash hack/kind/docker.sh stop     # stop the engine this script started
#
# What it does, each step skipped when already done:
#  1. checks the kernel has what Docker and kind need (overlay, cgroups,
#     iptables);
#  2. installs Debian's docker.io (apt) when dockerd is missing;
#  3. builds hack/kind/runc-wrapper into /usr/local/sbin/clustermesh-runc:
#     these machines' capability bounding set lacks CAP_SYS_RESOURCE, so every
#     `docker run --privileged` fails ("unable to apply caps") unless the
#     capability is removed from the OCI spec before runc sees it;
#  4. starts dockerd with that wrapper as its default runtime (PID 1 is not
#     systemd here), logging to $CLUSTERMESH_DOCKER_LOG, its PID in
#     $CLUSTERMESH_DOCKER_PIDFILE.
# Every run (root) also raises the host's inotify limits, which kind nodes
# exhaust. An engine that already runs without the wrapper is accepted only
# when the bounding set has the capability.
#
# Note: once dockerd has run, the host's FORWARD policy stays at DROP and
# bridge netfilter on; the emulator does not depend on either (see
# docs/kind.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
log=${CLUSTERMESH_DOCKER_LOG:-/var/log/clustermesh-dockerd.log}
pidfile=${CLUSTERMESH_DOCKER_PIDFILE:-/run/clustermesh-dockerd.pid}
wrapper=/usr/local/sbin/clustermesh-runc
runtime=clustermesh-runc

say() { printf 'docker.sh: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

if [ "${1:-}" = stop ]; then
	if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
		pid=$(cat "$pidfile")
		say "stopping dockerd (pid $pid)"
		kill "$pid"
		for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
		rm -f "$pidfile"
	fi
	exit 0
fi

# has_sys_resource: is CAP_SYS_RESOURCE (bit 24) in our bounding set?
has_sys_resource() {
	local bnd
	bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
	(( (16#$bnd >> 24) & 1 ))
}

engine_ok() { docker info >/dev/null 2>&1; }

# raise_inotify: every kind node runs kubelet, containerd, kube-proxy... each
# with inotify instances counted against the host's per-user limit (root's,
# shared by all nodes); the default 128 is used up by about five nodes and
# kube-proxy then fails with "too many open files". kind's known-issues
# page's values; only raised, never lowered.
raise_inotify() {
	local key want cur
	for kv in fs.inotify.max_user_instances=1024 fs.inotify.max_user_watches=524288; do
		key=${kv%=*} want=${kv#*=}
		cur=$(sysctl -n "$key" 2>/dev/null || echo 0)
		if [ "$cur" -lt "$want" ]; then
			sysctl -qw "$key=$want" 2>/dev/null || say "cannot raise $key to $want (now $cur): clusters of several nodes may fail with 'too many open files'"
		fi
	done
}
[ "$(id -u)" -ne 0 ] || raise_inotify

if engine_ok; then
	rt=$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null || true)
	if [ "$rt" != "$runtime" ] && ! has_sys_resource; then
		fail "a Docker engine runs with default runtime '$rt', but this machine's capability bounding set lacks CAP_SYS_RESOURCE, so kind's privileged nodes cannot start under it. Stop that dockerd and rerun this script (it starts one with the $runtime wrapper)."
	fi
	exit 0
fi

# From here on we start the engine ourselves: root only.
[ "$(id -u)" -eq 0 ] || fail "no Docker engine runs and starting one needs root (run with sudo)"

# 1. The kernel.
missing=()
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || missing+=("overlay filesystem (modprobe overlay)")
grep -qw cgroup /proc/filesystems || grep -qw cgroup2 /proc/filesystems || missing+=("cgroup filesystem")
[ -d /sys/fs/cgroup ] && [ -n "$(ls /sys/fs/cgroup 2>/dev/null)" ] || missing+=("cgroups mounted under /sys/fs/cgroup")
[ -e /proc/sys/net/ipv4/ip_forward ] || missing+=("IPv4 networking (/proc/sys/net/ipv4/ip_forward)")
if [ ${#missing[@]} -gt 0 ]; then
	fail "the kernel lacks what Docker needs: $(IFS=';'; echo "${missing[*]}")"
fi

# 2. The engine's packages.
if ! command -v dockerd >/dev/null; then
	say "installing docker.io (apt)"
	command -v apt-get >/dev/null || fail "dockerd is not installed and there is no apt-get to install docker.io; install a Docker engine"
	if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io; } >/tmp/clustermesh-apt-docker.log 2>&1; then
		tail -5 /tmp/clustermesh-apt-docker.log >&2
		fail "could not install docker.io with apt (log: /tmp/clustermesh-apt-docker.log)"
	fi
fi
for b in dockerd containerd runc iptables; do
	command -v "$b" >/dev/null || fail "$b is missing after installing docker.io"
done
command -v docker >/dev/null || fail "the docker client is missing"

# 3. The runc wrapper (rebuilt when its source is newer).
src=hack/kind/runc-wrapper/main.go
if [ ! -x "$wrapper" ] || [ "$src" -nt "$wrapper" ]; then
	command -v go >/dev/null || fail "go is needed to build $wrapper"
	(cd hack && CGO_ENABLED=0 go build -trimpath -o "$wrapper" ./kind/runc-wrapper) || fail "could not build $wrapper"
fi

# 4. Start dockerd, detached from this shell, and wait until it answers.
say "starting dockerd (log $log)"
setsid nohup dockerd --add-runtime "$runtime=$wrapper" --default-runtime "$runtime" >>"$log" 2>&1 </dev/null &
echo $! >"$pidfile"
for _ in $(seq 120); do
	engine_ok && { say "dockerd runs (pid $(cat "$pidfile"))"; exit 0; }
	kill -0 "$(cat "$pidfile")" 2>/dev/null || break
	sleep 0.5
done
tail -20 "$log" >&2
fail "dockerd did not come up (log: $log)"

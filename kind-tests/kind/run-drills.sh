#!/usr/bin/env bash
# Runs the kind-tests drills on two real kind clusters (Docker required).
#
# NOT exercised by CI: the machines that build this project have no Docker
# engine, so CI runs the same drills on clusters emulated with network
# namespaces (go test ./kind-tests/drills). This script is for users with
# Docker, kind and kubectl; see docs/drills.md.
#
#   kind-tests/kind/run-drills.sh          # create, drill, delete
#   KEEP=1 kind-tests/kind/run-drills.sh   # keep the clusters afterwards
#
# What it does: builds the project's static binaries and four scratch images
# (apiserver, agent, echo, probe), creates kind clusters cm-c1 and cm-c2
# (c1.yaml, c2.yaml: pod CIDRs 10.1.0.0/16 and 10.2.0.0/16), enables and
# connects the mesh with the clustermesh CLI (agents with --health and
# --routes=static: kindnet routes inside a cluster, the agents route to the
# other cluster's nodes over docker's network, no tunnel), deploys an echo service in both clusters, and runs
# the drills: global service, affinity local failover, agent restart under
# load, store down, hard node death (docker kill), disconnect. Each prints a
# figure and PASS or FAIL.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in docker kind kubectl go; do
	command -v "$tool" >/dev/null || { echo "run-drills: $tool not found" >&2; exit 1; }
done

C1=kind-cm-c1 C2=kind-cm-c2
work="$(mktemp -d)"
cleanup() {
	rm -rf "$work"
	if [ "${KEEP:-0}" != 1 ]; then
		kind delete cluster --name cm-c1 >/dev/null 2>&1 || true
		kind delete cluster --name cm-c2 >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT
fails=0
pass() { printf '  PASS  %-55s %s\n' "$1" "$2"; }
fail() { printf '  FAIL  %-55s %s\n' "$1" "$2"; fails=$((fails + 1)); }
now_ms() { date +%s%3N; }

echo "==> building binaries and images"
for cmd in clustermesh clustermesh-agent clustermesh-apiserver; do
	CGO_ENABLED=0 go build -o "$work/$cmd" "./cmd/$cmd"
done
for cmd in echo probe; do
	CGO_ENABLED=0 go build -o "$work/cm-$cmd" "./kind-tests/cmd/$cmd"
done
image() { # image NAME BINARY
	mkdir -p "$work/img-$1"
	cp "$work/$2" "$work/img-$1/bin"
	printf 'FROM scratch\nCOPY bin /bin/entry\nENTRYPOINT ["/bin/entry"]\n' >"$work/img-$1/Dockerfile"
	docker build -q -t "clustermesh/$1:kind" "$work/img-$1" >/dev/null
}
image apiserver clustermesh-apiserver
image agent clustermesh-agent
image echo cm-echo
image probe cm-probe
CLI="$work/clustermesh"

echo "==> creating kind clusters cm-c1 and cm-c2"
for c in c1 c2; do
	kind get clusters 2>/dev/null | grep -qx "cm-$c" || kind create cluster --config "kind-tests/kind/$c.yaml"
	for img in apiserver agent echo probe; do kind load docker-image --name "cm-$c" "clustermesh/$img:kind" >/dev/null; done
done

echo "==> enabling and connecting the mesh"
"$CLI" enable --context $C1 --cluster-name c1 --cluster-id 1 \
	--apiserver-image clustermesh/apiserver:kind --agent-image clustermesh/agent:kind
"$CLI" enable --context $C2 --cluster-name c2 --cluster-id 2 --inherit-ca-from $C1 \
	--apiserver-image clustermesh/apiserver:kind --agent-image clustermesh/agent:kind
for ctx in $C1 $C2; do
	# The manifests run agents with --health and --routes=static already.
	kubectl --context $ctx -n clustermesh-system rollout status daemonset/clustermesh-agent --timeout=180s
	kubectl --context $ctx -n clustermesh-system rollout status deployment/clustermesh-apiserver --timeout=180s
done
"$CLI" connect --context $C1 --destination-context $C2
"$CLI" status --context $C1 --wait --wait-duration 3m

echo "==> deploying the echo service"
for c in c1 c2; do
	kubectl --context "kind-cm-$c" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-$c, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: clustermesh/echo:kind
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
YAML
	kubectl --context "kind-cm-$c" rollout status "deployment/echo-$c" --timeout=180s
	"$CLI" service global default/echo --context "kind-cm-$c" --affinity none
done

# probe CTX NAME ARGS...: starts a client pod looping connect() to the
# service's ClusterIP (same probe as the emulated drills) on the first worker.
probe() {
	local ctx=$1 name=$2; shift 2
	local vip node
	vip=$(kubectl --context "$ctx" get svc echo -o jsonpath='{.spec.clusterIP}')
	node=$(kubectl --context "$ctx" get nodes -o name | grep worker | head -1 | cut -d/ -f2)
	kubectl --context "$ctx" delete pod "$name" --ignore-not-found --wait >/dev/null
	kubectl --context "$ctx" run "$name" --image=clustermesh/probe:kind --restart=Never \
		--overrides="{\"spec\":{\"nodeName\":\"$node\"}}" -- -target "$vip:80" "$@" >/dev/null
	kubectl --context "$ctx" wait --for=condition=Ready "pod/$name" --timeout=60s >/dev/null || true
}
# lines CTX NAME SINCE_MS: probe lines at or after SINCE_MS (unix ms).
lines() { kubectl --context "$1" logs "$2" | awk -v s="$3" '{ if ($2/1000000 >= s) print }'; }
# by_cluster: "c1:N c2:M failed:K" from probe lines on stdin.
by_cluster() { awk '{ if ($1=="ok") { split($4,a,"-"); n[a[2]]++ } else f++ } END { for (k in n) printf "%s:%d ", k, n[k]; printf "failed:%d\n", f+0 }'; }
# first_run_of N REGEX: unix ms of the first of N consecutive ok answers matching REGEX.
first_run_of() { awk -v n="$1" -v re="$2" '{ if ($1=="ok" && $4 ~ re) { if (run==0) t=$2; run++; if (run>=n) { print int(t/1000000); exit } } else run=0 }'; }

echo "==> drill: global service"
probe $C1 p-global -count 300
probe $C2 p-global -count 300
sleep 5
for ctx in $C1 $C2; do
	s=$(kubectl --context $ctx logs p-global | by_cluster)
	if echo "$s" | grep -q 'c1:' && echo "$s" | grep -q 'c2:'; then pass "global service from $ctx" "$s"; else fail "global service from $ctx" "$s"; fi
done

echo "==> drill: affinity local"
for ctx in $C1 $C2; do "$CLI" service global default/echo --context $ctx --affinity local >/dev/null; done
probe $C1 p-aff -interval 10ms
sleep 5
t0=$(now_ms)
kubectl --context $C1 scale deployment/echo-c1 --replicas=0 >/dev/null
sleep 15
t=$(lines $C1 p-aff "$t0" | first_run_of 30 '^echo-c2-')
if [ -n "$t" ]; then pass "affinity local: c1 scaled to 0 → traffic on c2" "$((t - t0)) ms"; else fail "affinity local failover" "$(lines $C1 p-aff "$t0" | by_cluster)"; fi
t1=$(now_ms)
kubectl --context $C1 scale deployment/echo-c1 --replicas=2 >/dev/null
kubectl --context $C1 rollout status deployment/echo-c1 --timeout=120s >/dev/null
sleep 5
t=$(lines $C1 p-aff "$t1" | first_run_of 50 '^echo-c1-')
if [ -n "$t" ]; then pass "affinity local: scaled back → traffic local" "$((t - t1)) ms"; else fail "affinity local return" "$(lines $C1 p-aff "$t1" | by_cluster)"; fi
for ctx in $C1 $C2; do "$CLI" service global default/echo --context $ctx --affinity none >/dev/null; done

echo "==> drill: agent restart under load"
node=$(kubectl --context $C1 get pod p-aff -o jsonpath='{.spec.nodeName}')
t0=$(now_ms)
kubectl --context $C1 -n clustermesh-system delete pod -l app.kubernetes.io/name=clustermesh-agent --field-selector "spec.nodeName=$node" >/dev/null
kubectl --context $C1 -n clustermesh-system rollout status daemonset/clustermesh-agent --timeout=120s >/dev/null
sleep 5
s=$(lines $C1 p-aff "$t0" | by_cluster)
case "$s" in *failed:0) pass "agent restart: failed connections" "$s" ;; *) fail "agent restart: failed connections" "$s" ;; esac

echo "==> drill: store down"
t0=$(now_ms)
kubectl --context $C2 -n clustermesh-system scale deployment/clustermesh-apiserver --replicas=0 >/dev/null
sleep 10
kubectl --context $C2 scale deployment/echo-c2 --replicas=3 >/dev/null
kubectl --context $C2 rollout status deployment/echo-c2 --timeout=120s >/dev/null
s=$(lines $C1 p-aff "$t0" | by_cluster)
case "$s" in *c2:*failed:0) pass "store down: traffic keeps reaching c2" "$s" ;; *) fail "store down: traffic keeps reaching c2" "$s" ;; esac
newest=$(kubectl --context $C2 get pods -l app=echo --sort-by=.metadata.creationTimestamp -o name | tail -1 | cut -d/ -f2)
t1=$(now_ms)
kubectl --context $C2 -n clustermesh-system scale deployment/clustermesh-apiserver --replicas=1 >/dev/null
sleep 20
t=$(lines $C1 p-aff "$t1" | first_run_of 1 "^$newest\$")
if [ -n "$t" ]; then pass "store restarted → pod added while down answers" "$((t - t1)) ms"; else fail "store down: converge" "$newest never answered"; fi
kubectl --context $C2 scale deployment/echo-c2 --replicas=2 >/dev/null

echo "==> drill: hard node death"
victim=$(kubectl --context $C2 get pods -l app=echo -o jsonpath='{.items[0].spec.nodeName}')
t0=$(now_ms)
docker kill "$victim" >/dev/null
sleep 20
last=$(lines $C1 p-aff "$t0" | awk '$1=="fail" { t=int($2/1000000) } END { print t+0 }')
if [ "$(lines $C1 p-aff "$(( $(now_ms) - 5000 ))" | by_cluster | grep -c 'failed:0')" = 1 ]; then
	pass "node death ($victim): last failed attempt after" "$(( last > 0 ? last - t0 : 0 )) ms"
else
	fail "node death ($victim): still failing 15 s later" "$(lines $C1 p-aff "$t0" | by_cluster)"
fi

echo "==> drill: disconnect"
probe $C2 p-disc -interval 10ms
sleep 3
t0=$(now_ms)
"$CLI" disconnect --context $C1 --destination-context $C2 >/dev/null
sleep 15
t=$(lines $C1 p-aff "$t0" | first_run_of 100 '^echo-c1-')
if [ -n "$t" ]; then pass "disconnect: c1's traffic only local" "$((t - t0)) ms"; else fail "disconnect: c1 drained" "$(lines $C1 p-aff "$t0" | by_cluster)"; fi
t=$(lines $C2 p-disc "$t0" | first_run_of 100 '^echo-c2-')
if [ -n "$t" ]; then pass "disconnect: c2's traffic only local" "$((t - t0)) ms"; else fail "disconnect: c2 drained" "$(lines $C2 p-disc "$t0" | by_cluster)"; fi

echo
if [ "$fails" -gt 0 ]; then echo "$fails drill(s) failed"; exit 1; fi
echo "all drills passed"

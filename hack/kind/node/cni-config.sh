#!/bin/bash
# Writes the node's CNI configuration once the node has a pod CIDR: kindnet
# (kind's default CNI) cannot be built here, so clusters are created with
# disableDefaultCNI and each node gets a fixed configuration, ptp (a veth per
# pod, routed by the node) + host-local IPAM over the node's own podCIDR (the
# controller manager allocates it: kubeadm passes --allocate-node-cidrs when
# a podSubnet is set) + portmap. Routes between the nodes' pod CIDRs are the
# mesh agents' job, not this file's.
#
# Pods' traffic to anything outside 10.0.0.0/8 (the Docker network, the
# internet) is masqueraded to the node's address; pod to pod traffic, in the
# cluster and between clusters, keeps its source address.
set -euo pipefail
conf=/etc/cni/net.d/10-clustermesh-ptp.conflist
kubeconfig=/etc/kubernetes/kubelet.conf
node=$(hostname)

until [ -f "$kubeconfig" ] &&
	cidr=$(kubectl --kubeconfig "$kubeconfig" get node "$node" -o 'jsonpath={.spec.podCIDR}' 2>/dev/null) &&
	[ -n "$cidr" ]; do
	sleep 1
done

if ! iptables -t nat -C POSTROUTING -s "$cidr" ! -d 10.0.0.0/8 -j MASQUERADE -m comment --comment clustermesh-kind 2>/dev/null; then
	iptables -t nat -A POSTROUTING -s "$cidr" ! -d 10.0.0.0/8 -j MASQUERADE -m comment --comment clustermesh-kind
fi

mkdir -p "$(dirname "$conf")"
cat >"$conf.tmp" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "clustermesh-kind",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "ranges": [[{ "subnet": "$cidr" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
mv "$conf.tmp" "$conf"
echo "cni-config: $conf for pod CIDR $cidr"

// Package emulator emulates several Kubernetes clusters of several nodes on
// one Linux machine, with real parts everywhere but the container runtime, so
// that the mesh's failover drills and demo run without Docker or kind.
//
// A Run owns everything of one emulation and names it with a per-run prefix
// ("cmk" + 4 hex digits, see NewPrefix):
//
//   - a fabric bridge in a namespace of its own, <prefix>-fabric (no tunnel):
//     every node and every cluster's control plane has a veth on it and an
//     address on the fabric subnet; the root namespace holds the fabric's
//     first address, on a veth into it, so the harness itself can reach every
//     control plane. Nothing forwards in the root namespace, so the host's
//     firewall (FORWARD policy DROP and bridge netfilter, as dockerd leaves
//     them) does not matter, and the run does not touch it;
//   - per node: a network namespace, a cgroup <prefix>/<cluster>/<node> under
//     the cgroup v2 mount (/sys/fs/cgroup/unified on hybrid hosts,
//     /sys/fs/cgroup on pure v2 ones, see netlab.CgroupRoot), a bpffs directory
//     /sys/fs/bpf/<prefix>/<cluster>/<node>, and (when built) the
//     clustermesh-agent process started in the node's namespace with nsenter
//     and in the node's cgroup from the first instruction (clone3 with a
//     cgroup fd);
//   - per pod: a network namespace behind a veth from its node's namespace,
//     the pod IP taken from the node's pod CIDR, a default route through the
//     node, and a TCP and UDP echo server that answers with the pod's name;
//   - per cluster (StartControlPlane): etcd and kube-apiserver through
//     internal/kubetest, kube-controller-manager with the workload,
//     EndpointSlice and GC controllers, a control-plane namespace on the
//     fabric where the clustermesh-apiserver pod runs, and the harness's
//     kubelet: it binds pods (it is the scheduler too), runs them (mesh pods
//     as processes with their Secret volumes written to disk and kept
//     current, every other pod as an echo pod), reports their status,
//     restarts exited processes and finishes deletions.
//
// The kernel objects are built with internal/netlab and the processes run
// through internal/proc, the same packages the root unit tests use; what is
// the emulator's own is the layout above, the run prefix and the teardown.
//
// Mesh drives such clusters as an operator would: the real clustermesh CLI
// (enable, connect, service global, disconnect) and the hack-built kubectl
// against a merged kubeconfig with one context per cluster. Traffic runs the
// probe command in a node's namespace and cgroup and records every attempt.
//
// Lifetimes: New creates the fabric; everything added later is registered on
// the Run's teardown stack and removed, in reverse order, by Close. Close is
// safe to call more than once and after a partial failure. A run that was
// killed before Close is removed by Clean (the cleanup command), which finds
// namespaces, links, cgroups, bpffs pins and processes by the prefix pattern:
// every process the harness starts lives in a cgroup under the run's cgroup,
// so Clean kills exactly those.
//
// Concurrency: a Run's methods may be called from several goroutines; the
// topology (clusters, nodes, pods) is guarded by the Run's mutex. Echo servers
// and traffic readers run on goroutines owned by their Pod or Traffic and stop
// when it is closed.
//
// Everything here needs root (network namespaces, cgroups, bpffs); New returns
// ErrNotRoot otherwise.
package emulator

// Package mesh implements what the clustermesh CLI does to clusters: enable
// (install), connect and disconnect, status, certificate rotation, global
// service annotation and debugging reads of a cluster's store.
//
// Every operation takes a *Cluster, a handle on one kubeconfig context, and
// talks to the Kubernetes API and, where it needs to, to the cluster's store
// (etcd over mTLS, with the admin certificate kept in the cluster). A Cluster
// holds only clients; it has no background goroutines and may be used from
// several goroutines. Operations are idempotent: running one twice converges
// to the same objects and changes nothing the second time.
//
// The clusters Secret (SecretClusters) is the contract with the agent: its
// keys are mounted as the agent's --clusters-dir. For each cluster the agent
// follows (its own included) there is one key named by the cluster holding a
// YAML connection file (see Connection), and three keys holding the files it
// refers to: "<cluster>.ca.crt", "<cluster>.client.crt", "<cluster>.client.key".
// Keys with a '.' are never connection files.
//
// Failed checks are returned as *CheckError, a list of Problems each naming
// what is wrong and the command or action that fixes it; errors.Is matches
// every problem's sentinel (ErrNameCollision, ErrIDCollision, ...).
package mesh

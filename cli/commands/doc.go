// Package commands is the cobra command tree of the clustermesh CLI. Each
// command parses flags, opens the clusters it names (kubeconfig contexts) and
// calls package mesh; output goes to the command's out and err writers so the
// tree can run in-process in tests. NewRoot builds a fresh tree per call; the
// tree holds no state beyond one invocation.
package commands

// Command coredns is CoreDNS with only the plugins the Corefile kubeadm
// writes uses (errors, health, ready, kubernetes, prometheus, forward, cache,
// loop, reload, loadbalance), plus the mesh's multicluster plugin
// (coredns/multicluster: clusterset.local names from ServiceImports, which
// `clustermesh enable` adds to the Corefile). It is built here because no
// registry is reachable to pull registry.k8s.io/coredns/coredns; fewer
// plugins build in a fraction of the time of the full CoreDNS.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins kept.

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	// The Multi-Cluster Services API's DNS (KEP-1645).
	_ "github.com/clustermesh/clustermesh/coredns/multicluster"
)

// directives is CoreDNS's plugin order (core/dnsserver/zdirectives.go)
// restricted to the plugins above; a plugin's place in this list, not in the
// Corefile, decides when it runs. multicluster comes before kubernetes, as
// upstream's plugin.cfg places the external multicluster plugin, so that a
// `.:53` block holding both answers clusterset.local itself.
var directives = []string{
	"reload", "ready", "health", "prometheus", "errors",
	"loadbalance", "cache", "multicluster", "kubernetes", "loop", "forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}

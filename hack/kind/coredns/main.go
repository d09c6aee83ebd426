// Command coredns is CoreDNS with only the plugins the Corefile kubeadm
// writes uses (errors, health, ready, kubernetes, prometheus, forward, cache,
// loop, reload, loadbalance). It is built here because no registry is
// reachable to pull registry.k8s.io/coredns/coredns; fewer plugins build in
// a fraction of the time of the full CoreDNS.
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
)

// directives is CoreDNS's plugin order (core/dnsserver/zdirectives.go)
// restricted to the plugins above; a plugin's place in this list, not in the
// Corefile, decides when it runs.
var directives = []string{
	"reload", "ready", "health", "prometheus", "errors",
	"loadbalance", "cache", "kubernetes", "loop", "forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}

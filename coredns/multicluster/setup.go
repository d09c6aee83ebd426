package multicluster

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func init() { plugin.Register(pluginName, setup) }

// readyGrace bounds how long the plugin holds CoreDNS's readiness back.
const readyGrace = 30 * time.Second

// config is a parsed multicluster block.
type config struct {
	zones       []string
	kubeconfig  string // empty: in-cluster
	context     string
	noEndpoints bool
	fall        []string // nil: no fallthrough; empty: every zone
	fallSet     bool
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	rc, err := cfg.restConfig()
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	log := clog.NewWithPlugin(pluginName)
	w, err := newWatcher(rc, cfg.noEndpoints, log)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var started atomic.Int64 // Unix nanoseconds; read by the ready plugin's goroutine
	c.OnStartup(func() error {
		started.Store(time.Now().UnixNano())
		w.run(ctx)
		// clustermesh enable looks for this line to confirm that the
		// CoreDNS it configured has the plugin.
		log.Infof("serving %s from ServiceImports", strings.Join(cfg.zones, " "))
		return nil
	})
	c.OnShutdown(func() error { cancel(); return nil })

	// Ready once the caches are filled, or after readyGrace if they cannot
	// be (no ServiceImport CRD, no RBAC yet): CoreDNS must not stay unready,
	// taking the cluster's DNS down, for the sake of clusterset.local.
	ready := func() bool {
		if w.hasSynced() {
			return true
		}
		if t := started.Load(); t != 0 && time.Since(time.Unix(0, t)) > readyGrace {
			log.Warningf("ServiceImports not listed within %s (is the CRD installed and may CoreDNS's service account list them?): ready anyway, clusterset.local names answer NXDOMAIN until they are", readyGrace)
			return true
		}
		return false
	}
	m := &MultiCluster{Zones: cfg.zones, src: w, serial: w.serial, isReady: ready}
	if cfg.fallSet {
		m.Fall.SetZonesFromArgs(cfg.fall)
	}
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		m.Next = next
		return m
	})
	return nil
}

// parse reads
//
//	multicluster [ZONES...] {
//	    kubeconfig KUBECONFIG [CONTEXT]
//	    noendpoints
//	    fallthrough [ZONES...]
//	}
func parse(c *caddy.Controller) (config, error) {
	var cfg config
	if !c.Next() { // the plugin's name
		return cfg, c.ArgErr()
	}
	cfg.zones = plugin.OriginsFromArgsOrServerBlock(c.RemainingArgs(), c.ServerBlockKeys)
	for c.NextBlock() {
		switch c.Val() {
		case "kubeconfig":
			args := c.RemainingArgs()
			if len(args) != 1 && len(args) != 2 {
				return cfg, c.ArgErr()
			}
			cfg.kubeconfig = args[0]
			if len(args) == 2 {
				cfg.context = args[1]
			}
		case "noendpoints":
			if len(c.RemainingArgs()) != 0 {
				return cfg, c.ArgErr()
			}
			cfg.noEndpoints = true
		case "fallthrough":
			cfg.fallSet = true
			cfg.fall = c.RemainingArgs()
		default:
			return cfg, c.Errf("unknown property %q", c.Val())
		}
	}
	if c.Next() {
		return cfg, fmt.Errorf("only one multicluster block per server block")
	}
	return cfg, nil
}

// restConfig is the API server connection: the kubeconfig given, else the
// pod's service account.
func (cfg config) restConfig() (*rest.Config, error) {
	if cfg.kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given and not in a cluster: %w", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: cfg.context},
	).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", cfg.kubeconfig, err)
	}
	return rc, nil
}

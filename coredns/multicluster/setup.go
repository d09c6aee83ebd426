package multicluster

import (
	"context"
	"fmt"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func init() { plugin.Register(pluginName, setup) }

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
	w, err := newWatcher(rc, cfg.noEndpoints, clog.NewWithPlugin(pluginName))
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.OnStartup(func() error { w.run(ctx); return nil })
	c.OnShutdown(func() error { cancel(); return nil })

	m := &MultiCluster{Zones: cfg.zones, src: w, serial: w.serial, isReady: w.hasSynced}
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

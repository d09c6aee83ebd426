// Command clustermesh-apiserver exports a Kubernetes cluster's services,
// endpoints, nodes, identities and ipcache into the cluster's mesh store. See
// docs/apiserver.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/flagdir"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/internal/version"
)

func main() {
	cfg := apiserver.DefaultConfig()
	var logFlags logging.Flags
	var configDir string
	cmd := &cobra.Command{
		Use:   "clustermesh-apiserver --cluster-name NAME --cluster-id ID [flags]",
		Short: "Export this Kubernetes cluster's state into its clustermesh store",
		Long: `clustermesh-apiserver watches the cluster's Kubernetes API (Services,
EndpointSlices, Nodes, Namespaces, Pods) and exports what peers need into the
cluster's store: the cluster config, nodes and pod CIDRs, services carrying a
clustermesh.io/* (or Cilium service.cilium.io/*) annotation, the EndpointSlices
of global services, identities and the ipcache.

The store is an embedded etcd by default (--etcd-*), served to peers over
mutual TLS with a read-only role, or an external etcd (--kvstore-config).

With --bgp-reflector-address and --bgp-asn it also hosts the cluster's BGP
route reflector: published in the cluster config, peered with every node of
the cluster and with the reflectors of the clusters in --clusters-dir.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			settings, err := flagdir.Apply(cmd.Flags(), configDir)
			if err != nil {
				return err
			}
			log, err := logFlags.Logger(os.Stderr)
			if err != nil {
				return err
			}
			// Dependencies logging through the global logger follow the
			// flags too.
			slog.SetDefault(log)
			if len(settings) > 0 {
				log.Info("flags set from the config dir", "config_dir", configDir, "flags", settings)
			}
			srv, err := apiserver.New(cfg, &apiserver.Options{Logger: log})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.Run(ctx)
		},
	}
	cfg.Flags(cmd.Flags())
	logFlags.Register(cmd.Flags())
	cmd.Flags().StringVar(&configDir, "config-dir", "", "directory with one file per flag, named for the flag and holding its value (the clustermesh-apiserver-config ConfigMap that enable owns); flags given on the command line win")
	version.AddTo(cmd)
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "clustermesh-apiserver:", err)
		os.Exit(1)
	}
}

package commands

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cli/mesh"
)

func newCerts(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Manage the mesh's certificates",
	}
	var caCert, caKey string
	rotate := &cobra.Command{
		Use:   "rotate --context CONTEXT",
		Short: "Re-issue the cluster's certificates from the same CA, without connection loss",
		Long: `rotate replaces the server, admin, remote and agent certificates of the
cluster with new ones from the same CA and updates the clusters Secret. Old and
new certificates are valid side by side, so no connection drops; processes pick
up the new files when the kubelet refreshes the mounts. status warns 30 days
before a certificate expires.`,
		Example: `  clustermesh certs rotate --context c1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := mesh.RotateOptions{Log: g.logger(cmd)}
			if (caCert == "") != (caKey == "") {
				return fmt.Errorf("%w: --ca-cert and --ca-key go together", mesh.ErrInvalidArgument)
			}
			if caCert != "" {
				ca, err := loadCAFiles(caCert, caKey)
				if err != nil {
					return err
				}
				opts.CA = ca
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			if err := mesh.RotateCerts(cmd.Context(), c, opts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "✓ certificates of context %s re-issued\n", c.Context)
			return nil
		},
	}
	rotate.Flags().StringVar(&caCert, "ca-cert", "", "PEM file of the cluster's CA certificate, when its key is kept offline (with --ca-key)")
	rotate.Flags().StringVar(&caKey, "ca-key", "", "PEM file of the CA's private key")
	cmd.AddCommand(rotate, newRotateCA(g))
	return cmd
}

func newRotateCA(g *globals) *cobra.Command {
	var (
		phase  string
		peers  []string
		settle time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate-ca --context CONTEXT --phase start|finish [--peer-context CONTEXT...]",
		Short: "Replace the cluster's CA in two phases, without connection loss",
		Long: `rotate-ca replaces the cluster's certificate authority without dropping any
connection, local or from a connected cluster's agents.

  --phase start   creates a new CA, certifies it with the current one, and
                  re-issues every certificate of the cluster and every peer
                  certificate this cluster's CA issued (re-running connect with
                  each peer). Every trust bundle holds both CAs; old and new
                  certificates are accepted everywhere.
  --phase finish  (at least --settle after start, once the kubelet refreshed
                  every Secret mount) drops the previous CA. The store then
                  refuses certificates of the previous CA, on new requests and
                  on watches already open, without a restart.

Every connected cluster must be named with --peer-context: each holds
certificates issued by this cluster's CA. Re-running a phase is safe. The CA
key must be in the cluster; a CA kept offline is replaced with
enable --replace-ca (which does drop connections).`,
		Example: `  clustermesh certs rotate-ca --context c1 --peer-context c2 --phase start
  clustermesh status --context c1 --wait
  clustermesh certs rotate-ca --context c1 --peer-context c2 --phase finish`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open("")
			if err != nil {
				return err
			}
			opts := mesh.RotateCAOptions{Phase: phase, Settle: settle, Log: g.logger(cmd)}
			for _, p := range peers {
				pc, err := g.open(p)
				if err != nil {
					return err
				}
				opts.Peers = append(opts.Peers, pc)
			}
			if err := mesh.RotateCA(cmd.Context(), c, opts); err != nil {
				return err
			}
			switch phase {
			case mesh.PhaseStart:
				fmt.Fprintf(cmd.OutOrStdout(), "✓ CA rotation of context %s started: certificates of the new CA issued, both CAs trusted\n  next: wait %s for the Secret mounts to refresh, then run with --phase finish\n", c.Context, mesh.DefaultRotationSettle)
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "✓ CA rotation of context %s finished: the previous CA is no longer trusted\n", c.Context)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&phase, "phase", "", "rotation phase: start or finish (required)")
	f.StringArrayVar(&peers, "peer-context", nil, "kubeconfig context of a connected cluster (repeatable; every connected cluster is required)")
	f.DurationVar(&settle, "settle", mesh.DefaultRotationSettle, "least time between start and finish: how long processes may take to load the new certificates")
	_ = cmd.MarkFlagRequired("phase")
	_ = cmd.RegisterFlagCompletionFunc("peer-context", g.completeContexts)
	return cmd
}

package commands

import (
	"fmt"

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
	cmd.AddCommand(rotate)
	return cmd
}

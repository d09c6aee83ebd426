package commands

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cli/mesh"
)

func newKV(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kv",
		Short: "Read a cluster's store, decoded (debugging)",
		Long: `kv reads a store with the admin certificate kept in the cluster (or, with
--cluster, a peer's store with the certificate its agents use) and decodes
every value. Keys may be given relative to clustermesh/v1/.`,
	}
	var (
		out  output
		opts mesh.KVOptions
	)
	addFlags := func(c *cobra.Command) {
		out.register(c)
		c.Flags().StringVar(&opts.Peer, "cluster", "", "read this connected peer's store instead of the cluster's own")
		c.Flags().StringVar(&opts.Endpoint, "endpoint", "", "reach the store here instead of the recorded endpoint")
	}
	get := &cobra.Command{
		Use:     "get KEY",
		Short:   "Get and decode one key",
		Example: `  clustermesh kv get --context c1 cluster/c1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			kv, err := mesh.KVGet(cmd.Context(), c, args[0], opts)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), kv, func(w io.Writer) { printKV(w, *kv) })
		},
	}
	addFlags(get)
	list := &cobra.Command{
		Use:     "list [PREFIX]",
		Short:   "List and decode every key under a prefix",
		Example: `  clustermesh kv list --context c1 services/`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			kvs, err := mesh.KVList(cmd.Context(), c, prefix, opts)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), kvs, func(w io.Writer) {
				for _, kv := range kvs {
					printKV(w, kv)
				}
			})
		},
	}
	addFlags(list)
	list.Flags().BoolVar(&opts.KeysOnly, "keys-only", false, "list keys only")
	cmd.AddCommand(get, list)
	return cmd
}

func printKV(w io.Writer, kv mesh.KV) {
	if kv.Value == nil {
		fmt.Fprintln(w, kv.Key)
		return
	}
	b, err := json.Marshal(kv.Value)
	if err != nil {
		b = []byte(fmt.Sprint(kv.Value))
	}
	fmt.Fprintf(w, "%s [%s] %s\n", kv.Key, kv.Kind, b)
	if kv.Error != "" {
		fmt.Fprintf(w, "  ✗ %s\n", kv.Error)
	}
}

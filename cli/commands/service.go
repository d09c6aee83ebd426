package commands

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/cli/mesh"
)

func newService(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Mark services global and list global services",
	}
	cmd.AddCommand(newServiceGlobal(g), newServiceList(g))
	return cmd
}

func newServiceGlobal(g *globals) *cobra.Command {
	var (
		affinity string
		shared   bool
		minLocal uint32
		remove   bool
	)
	cmd := &cobra.Command{
		Use:   "global NAMESPACE/NAME [--affinity local|remote|none] [--shared=true|false] [--min-local-backends N]",
		Short: "Mark a Service global (served by backends of every cluster)",
		Long: `global annotates a Service so the mesh merges it with the Services of the same
namespace and name in the other clusters. Run it in every cluster that serves
or uses the service. Values are validated before anything is written; flags
not given leave their annotation unchanged. --remove makes it non-global.`,
		Example: `  clustermesh service global demo/echo --context c1
  clustermesh service global demo/echo --context c2 --affinity local --min-local-backends 2
  clustermesh service global demo/echo --context c2 --shared=false`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := mesh.ParseServiceRef(args[0])
			if err != nil {
				return err
			}
			opts := mesh.GlobalOptions{Global: !remove}
			f := cmd.Flags()
			if remove && (f.Changed("affinity") || f.Changed("shared") || f.Changed("min-local-backends")) {
				return fmt.Errorf("%w: --remove takes no other setting", mesh.ErrInvalidArgument)
			}
			if f.Changed("affinity") {
				a := api.Affinity(affinity)
				if err := api.ValidateAffinity(a); err != nil || a == "" {
					return fmt.Errorf("%w: --affinity %q: must be local, remote or none", mesh.ErrInvalidArgument, affinity)
				}
				opts.Affinity = &a
			}
			if f.Changed("shared") {
				opts.Shared = &shared
			}
			if f.Changed("min-local-backends") {
				if minLocal == 0 {
					return fmt.Errorf("%w: --min-local-backends 0: must be at least 1", mesh.ErrInvalidArgument)
				}
				opts.MinLocalBackends = &minLocal
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			if err := mesh.SetGlobal(cmd.Context(), c, ns, name, opts); err != nil {
				return err
			}
			verb := "is global"
			if remove {
				verb = "is no longer global"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "✓ service %s/%s %s in context %s\n", ns, name, verb, c.Context)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&affinity, "affinity", "", "which cluster's backends to prefer: local, remote or none")
	f.BoolVar(&shared, "shared", true, "export this cluster's backends to other clusters")
	f.Uint32Var(&minLocal, "min-local-backends", 1, "with --affinity local: prefer local backends while at least this many are ready")
	f.BoolVar(&remove, "remove", false, "remove the mesh annotations")
	_ = cmd.RegisterFlagCompletionFunc("affinity", cobra.FixedCompletions([]string{"local", "remote", "none"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func newServiceList(g *globals) *cobra.Command {
	var (
		out  output
		opts mesh.StoreOptions
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List global services with their backends per cluster, read from the stores, and the cluster's ServiceExports and ServiceImports",
		Example: `  clustermesh service list --context c1
  clustermesh service list --context c1 -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			res, err := mesh.ListGlobalServices(cmd.Context(), c, opts)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), res, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SERVICE\tBACKENDS\tPER CLUSTER (ready/total)")
				for _, s := range res.Services {
					var parts []string
					for _, in := range s.Clusters {
						p := fmt.Sprintf("%s: %d/%d", in.Cluster, in.Ready, in.Backends)
						if !in.Shared {
							p += " (not shared)"
						}
						if in.Affinity != "" && in.Affinity != api.AffinityNone {
							p += " affinity=" + string(in.Affinity)
						}
						if in.Via != "" && in.Via != "annotation" {
							p += " via " + in.Via
						}
						if len(in.ClusterSetIPs) > 0 {
							p += " clusterset IP " + strings.Join(in.ClusterSetIPs, ",")
						}
						parts = append(parts, p)
					}
					fmt.Fprintf(tw, "%s/%s\t%s\t%s\n", s.Namespace, s.Name, strconv.Itoa(s.Backends), strings.Join(parts, ", "))
				}
				tw.Flush()
				printMCS(w, res.MCS)
				for name, why := range res.Unreadable {
					fmt.Fprintf(w, "✗ cluster %s not read: %s\n", name, why)
				}
			})
		},
	}
	out.register(cmd)
	cmd.Flags().StringVar(&opts.Endpoint, "endpoint", "", "reach the cluster's own store here instead of the recorded endpoint")
	return cmd
}

// printMCS prints a cluster's ServiceExports and ServiceImports with their
// conditions (type=status, and the reason when not the happy one).
func printMCS(w io.Writer, v *mesh.MCSView) {
	if v == nil || len(v.Exports)+len(v.Imports) == 0 {
		return
	}
	cond := func(o mesh.MCSObject, types ...string) string {
		var parts []string
		for _, t := range types {
			c := o.Condition(t)
			if c.Status == "" {
				continue
			}
			p := t + "=" + c.Status
			if (t == "Conflict") == (c.Status == "True") && c.Reason != "" {
				p += " (" + c.Reason + ")"
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, " ")
	}
	fmt.Fprintf(w, "\nMulti-Cluster Services in cluster %s:\n", v.Cluster)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tSERVICE\tTYPE\tIPS\tCLUSTERS\tCONDITIONS")
	for _, o := range v.Exports {
		fmt.Fprintf(tw, "export\t%s/%s\t-\t-\t%s\t%s\n", o.Namespace, o.Name, v.Cluster, cond(o, "Valid", "Ready", "Conflict"))
	}
	for _, o := range v.Imports {
		fmt.Fprintf(tw, "import\t%s/%s\t%s\t%s\t%s\t%s\n", o.Namespace, o.Name, o.Type, orDash(strings.Join(o.IPs, ",")), strings.Join(o.Clusters, ","), cond(o, "Ready", "Conflict"))
	}
	tw.Flush()
	for _, o := range append(append([]mesh.MCSObject(nil), v.Exports...), v.Imports...) {
		for _, t := range []string{"Valid", "Conflict"} {
			if c := o.Condition(t); (t == "Valid" && c.Status == "False") || (t == "Conflict" && c.Status == "True") {
				fmt.Fprintf(w, "✗ %s %s/%s: %s\n", o.Kind, o.Namespace, o.Name, c.Message)
			}
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

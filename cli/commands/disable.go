package commands

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/deploy"
)

func newDisable(g *globals) *cobra.Command {
	var opts mesh.DisableOptions
	cmd := &cobra.Command{
		Use:   "disable --context CONTEXT",
		Short: "Remove the mesh from a cluster completely, nodes included",
		Long: `disable removes everything enable installed, and everything the agents left
on the nodes, from one cluster:

  1. It refuses while the cluster is connected to peers (their agents would
     keep dialing its store) and names them: run clustermesh disconnect first.
     --force removes only this cluster's side and says which peers keep an
     entry for it.
  2. It deletes the agent DaemonSet and waits until its pods have stopped.
  3. It runs a cleanup pod on every node (DaemonSet clustermesh-cleanup, the
     agent's image running clustermesh-agent cleanup with the agent's host
     mounts and capabilities): the agent's eBPF programs are detached from the
     node's cgroup, its pinned links and maps removed, and every route of its
     protocols (static and BGP) deleted. It waits until every node's pod
     reports nothing left, and names the nodes that do not.
  4. It deletes every object labelled app.kubernetes.io/part-of=clustermesh
     (DaemonSets, Deployments, StatefulSets, Services, ConfigMaps, Secrets
     with the CA and certificates, ServiceAccounts, PersistentVolumeClaims,
     ClusterRoles, ClusterRoleBindings, PersistentVolumes) and the namespace,
     and waits until they are gone.

Each wait is bounded by --wait-duration. A cluster where nothing of the mesh
is found is reported as not enabled and disable exits 0, so it can be re-run
after an interruption; a half-removed installation is removed as far as it
exists. The global-service annotations on your own Services are left as they
are (they mean nothing without the mesh).`,
		Example: `  clustermesh disconnect --context c1 --destination-context c2
  clustermesh disable --context c1

  # c2's context is gone: remove c1 anyway, then drop c1 from c2 when you can
  clustermesh disable --context c1 --force`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open("")
			if err != nil {
				return err
			}
			opts.Progress = progressTo(cmd)
			opts.Log = g.logger(cmd)
			res, err := mesh.Disable(cmd.Context(), c, opts)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if res.NotEnabled {
				fmt.Fprintf(w, "✓ clustermesh is not enabled in context %s: nothing to remove\n", c.Context)
				return nil
			}
			name := res.ClusterName
			if name == "" {
				name = "(name unknown)"
			}
			fmt.Fprintf(w, "✓ cluster %s removed from context %s: %d node(s) cleaned, %d object(s) deleted\n", name, c.Context, len(res.CleanedNodes), len(res.Deleted))
			if g.verbose {
				for _, d := range res.Deleted {
					fmt.Fprintf(w, "  deleted %s\n", d)
				}
			}
			if len(res.FailedNodes) > 0 {
				var lines []string
				for n, why := range res.FailedNodes {
					lines = append(lines, n+" ("+why+")")
				}
				fmt.Fprintf(w, "! not cleaned (--force): %s; run clustermesh-agent cleanup on them\n", strings.Join(lines, ", "))
			}
			for _, p := range res.Peers {
				fmt.Fprintf(w, "! peer %s still has an entry for %s (--force): clustermesh disconnect --context <context of %s> --destination-cluster %s\n", p, name, p, name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.Force, "force", false, "remove the cluster even while peers are connected (only this side is removed) or when agents do not stop or nodes cannot be cleaned in time")
	f.DurationVar(&opts.Wait, "wait-duration", mesh.DefaultDisableWait, "bound of each wait: the agents to stop, every node to be cleaned, the namespace to be deleted")
	f.StringVar(&opts.AgentImage, "agent-image", deploy.AgentImage(), "image of the node cleanup when the agent DaemonSet is gone already (otherwise the agents' own image is used)")
	return cmd
}

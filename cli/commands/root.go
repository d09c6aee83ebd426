package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/internal/version"
)

// globals are the flags every command shares.
type globals struct {
	kubeconfig string
	context    string
	verbose    bool
}

func (g *globals) open(context string) (*mesh.Cluster, error) {
	if context == "" {
		context = g.context
	}
	return mesh.Open(g.kubeconfig, context)
}

func (g *globals) logger(cmd *cobra.Command) *slog.Logger {
	if !g.verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
}

// NewRoot returns the clustermesh command tree.
func NewRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "clustermesh",
		Short: "Join Kubernetes clusters into one network",
		Long: `clustermesh installs the mesh into clusters (enable), joins them (connect),
shows what works and what does not (status), marks services global, and
removes the mesh again (disconnect, then disable).

Clusters are named by kubeconfig contexts, as with kubectl.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	pf.StringVar(&g.context, "context", "", "kubeconfig context of the cluster to act on (default: current context)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log each step to stderr")
	_ = root.RegisterFlagCompletionFunc("context", g.completeContexts)

	root.AddCommand(newEnable(g), newConnect(g), newDisconnect(g), newDisable(g), newStatus(g), newService(g), newKV(g), newCerts(g), newObserve(g))
	version.AddTo(root)
	return root
}

// completeContexts completes kubeconfig context names.
func (g *globals) completeContexts(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kc, _ := cmd.Flags().GetString("kubeconfig"); kc != "" {
		rules.ExplicitPath = kc
	}
	cfg, err := rules.Load()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for n := range cfg.Contexts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, cobra.ShellCompDirectiveNoFileComp
}

// output is the -o flag of read commands.
type output struct{ format string }

func (o *output) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "text", "output format: text, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"text", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
}

func (o *output) validate() error {
	switch o.format {
	case "text", "json", "yaml":
		return nil
	}
	return fmt.Errorf("%w: output format %q: must be text, json or yaml", mesh.ErrInvalidArgument, o.format)
}

// print writes v as JSON or YAML, or calls text for the human format.
func (o *output) print(w io.Writer, v any, text func(io.Writer)) error {
	switch o.format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	text(w)
	return nil
}

// Execute runs the tree with ctx and the process arguments; it is what main
// calls.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

package commands

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/pki"
)

func newEnable(g *globals) *cobra.Command {
	var (
		opts          mesh.EnableOptions
		clusterID     uint32
		maxClusterID  uint32
		caCert, caKey string
		inheritFrom   string
		gossipKey     string
		dryRun        bool
		waitFor       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "enable --context CONTEXT --cluster-name NAME --cluster-id ID",
		Short: "Install the mesh into a cluster (idempotent)",
		Long: `enable installs the clustermesh-apiserver, the agent DaemonSet, their RBAC and
certificates into namespace clustermesh-system, with server-side apply. Running
it again with the same flags changes nothing; certificates are kept while they
are valid for more than 30 days.

enable then waits, printing progress, until the cluster's store serves (the
clustermesh-apiserver pulled, started and answering with the admin
certificate), so that connect can run right after it; --wait-duration bounds
the wait.

Settings an operator may change live in ConfigMaps that enable owns:
clustermesh-agent-config and clustermesh-apiserver-config, one key per flag of
the daemon (see clustermesh-agent --help). enable writes the keys it manages
(routes, health) and keeps their values on a re-run unless given again here;
keys you add with kubectl edit are left alone, and a re-run of enable after an
edit restarts the pods with the new flags.

The store persists in a StatefulSet's volume (--store-storage): a claim of the
cluster's default StorageClass (or --store-class), or, on clusters without a
provisioner, a node-local PersistentVolume on one node (--store-node, default
the first control-plane node). auto picks a claim when the cluster has a
default StorageClass. The choice is recorded and kept; changing it needs
clustermesh disable first, as the store would start empty.

Clusters that will be connected must share the mesh's gossip key: pass
--gossip-key, or --inherit-ca-from with the context of a cluster already
enabled (which also shares its CA). Each cluster may keep its own CA: connect
issues every peer certificate from the CA of the store it is for.

Multi-Cluster Services' names (<service>.<namespace>.svc.clusterset.local)
are served by CoreDNS's multicluster plugin (--coredns): enable adds it to the
Corefile in ConfigMap kube-system/coredns and lets CoreDNS read ServiceImports;
in auto mode it then waits for CoreDNS to reload and rolls the Corefile back,
saying what to do, when that CoreDNS lacks the plugin. disable removes both.`,
		Example: `  clustermesh enable --context c1 --cluster-name c1 --cluster-id 1
  clustermesh enable --context c2 --cluster-name c2 --cluster-id 2 --inherit-ca-from c1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts.ClusterID, opts.MaxClusterID = clusterID, maxClusterID
			switch opts.CoreDNS {
			case mesh.CoreDNSAuto, mesh.CoreDNSConfigure, mesh.CoreDNSSkip:
			default:
				return fmt.Errorf("%w: --coredns %q: must be auto, configure or skip", mesh.ErrInvalidArgument, opts.CoreDNS)
			}
			if dryRun {
				b, err := mesh.RenderManifests(deploy.Namespace, opts)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			if opts.ClusterName == "" {
				return fmt.Errorf("%w: --cluster-name is required", mesh.ErrInvalidArgument)
			}
			if err := api.ValidateClusterID(clusterID, maxClusterID); err != nil {
				return fmt.Errorf("--cluster-id: %w", err)
			}
			switch {
			case inheritFrom != "" && (caCert != "" || caKey != ""):
				return fmt.Errorf("%w: --inherit-ca-from and --ca-cert/--ca-key exclude each other", mesh.ErrInvalidArgument)
			case (caCert == "") != (caKey == ""):
				return fmt.Errorf("%w: --ca-cert and --ca-key go together", mesh.ErrInvalidArgument)
			case caCert != "":
				var err error
				if opts.CA, err = loadCAFiles(caCert, caKey); err != nil {
					return err
				}
			case inheritFrom != "":
				from, err := g.open(inheritFrom)
				if err != nil {
					return fmt.Errorf("--inherit-ca-from: %w", err)
				}
				opts.InheritFrom = from
			}
			if gossipKey != "" {
				if inheritFrom != "" {
					return fmt.Errorf("%w: --inherit-ca-from already shares the gossip key; drop --gossip-key", mesh.ErrInvalidArgument)
				}
				b, err := os.ReadFile(gossipKey)
				if err != nil {
					return fmt.Errorf("--gossip-key: %w", err)
				}
				opts.GossipKey = bytes.TrimSpace(b)
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			opts.Log = g.logger(cmd)
			res, err := mesh.Enable(ctx, c, opts)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if len(res.Changes) == 0 {
				fmt.Fprintf(w, "✓ cluster %s (ID %d) already enabled in context %s, nothing changed; peers reach its store at %s\n", res.ClusterName, res.ClusterID, c.Context, res.Endpoint)
			} else {
				fmt.Fprintf(w, "✓ cluster %s (ID %d) enabled in context %s; peers reach its store at %s\n", res.ClusterName, res.ClusterID, c.Context, res.Endpoint)
				if g.verbose {
					for _, ch := range res.Changes {
						fmt.Fprintf(w, "  %s\n", ch)
					}
				} else {
					fmt.Fprintf(w, "  %d object(s) created or updated in namespace %s (-v lists them)\n", len(res.Changes), c.Namespace)
				}
			}
			if res.CreatedCA {
				fmt.Fprintf(w, "  created a new CA: enable the other clusters with --inherit-ca-from %s so they trust each other\n", c.Context)
			}
			if res.CoreDNS != nil {
				mark := "✓"
				if !res.CoreDNS.Configured {
					mark = "!"
				}
				fmt.Fprintf(w, "%s DNS: %s\n", mark, res.CoreDNS.Message)
			}
			if waitFor == 0 {
				fmt.Fprintf(w, "  not waiting for the store (--wait-duration 0): clustermesh status --context %s --wait tells when it serves\n", c.Context)
				return nil
			}
			start := time.Now()
			err = mesh.WaitStore(ctx, c, mesh.StoreOptions{}, mesh.StoreWait{For: waitFor, Progress: progressTo(cmd), Log: opts.Log})
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "✓ store of %s serves at %s (waited %s)\n", res.ClusterName, res.Endpoint, time.Since(start).Round(100*time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ClusterName, "cluster-name", "", "name of the cluster in the mesh (lower-case DNS label, at most 32 characters)")
	f.Uint32Var(&clusterID, "cluster-id", 0, "numeric cluster ID, unique in the mesh (1..max-cluster-id)")
	f.Uint32Var(&maxClusterID, "max-cluster-id", api.DefaultMaxClusterID, "mesh-wide cluster ID limit: 255 or 511 (same on every cluster)")
	f.StringVar(&opts.Endpoint, "endpoint", "", "https://HOST:PORT where peers reach this cluster's store (default: from the Service)")
	f.StringVar(&opts.ServiceType, "service-type", "NodePort", "type of the apiserver Service: NodePort, LoadBalancer or ClusterIP")
	f.StringVar(&opts.Routes, "routes", "", "how agents route pod CIDRs natively, no tunnel: bgp (every node's BGP speaker announces its pod CIDRs to this cluster's route reflector, hosted by the clustermesh-apiserver on its node's address, which peers with the connected clusters' reflectors; nodes install every other node's routes, and keep them through a control-plane outage by BGP graceful restart), static (routes to every connected cluster's nodes from the stores; the CNI routes inside the cluster), static-all (also this cluster's other nodes, for a CNI that does not route between nodes, e.g. kind without kindnet) or none (the fabric does); default: the cluster's current setting, else bgp")
	f.Uint32Var(&opts.BGPASN, "bgp-asn", 0, "the cluster's BGP autonomous system number with --routes bgp, distinct per cluster (default: the recorded one, else 64512 + cluster ID, from the private range)")
	f.StringVar(&opts.Storage, "store-storage", mesh.StorageAuto, "where the store keeps its data: auto, claim (a PersistentVolumeClaim), node-local (a local PersistentVolume on --store-node, for clusters without a provisioner) or ephemeral (lost when the pod is replaced); an installed cluster keeps its choice")
	f.StringVar(&opts.StorageClass, "store-class", "", "StorageClass of the store's claim (default: the cluster's default class)")
	f.StringVar(&opts.StorageSize, "store-size", "", "size of the store's volume (default 4Gi; the store's own quota is 2 GiB)")
	f.StringVar(&opts.StoreNode, "store-node", "", "node of a node-local store (default: the first control-plane node by name)")
	// The default images are this build's: `make images` builds them and
	// the nodes must have them (kind load image-archive, or a registry).
	f.StringVar(&opts.APIServerImage, "apiserver-image", deploy.APIServerImage(), "image of the clustermesh-apiserver; the default, this build's, comes from make images")
	f.StringVar(&opts.AgentImage, "agent-image", deploy.AgentImage(), "image of the clustermesh-agent; the default, this build's, comes from make images")
	f.StringVar(&caCert, "ca-cert", "", "PEM file of a CA certificate to use (with --ca-key)")
	f.StringVar(&caKey, "ca-key", "", "PEM file of the CA's private key")
	f.StringVar(&inheritFrom, "inherit-ca-from", "", "kubeconfig context of an enabled cluster whose CA to share")
	f.StringVar(&gossipKey, "gossip-key", "", "file holding the mesh's node-health gossip key (base64 of 16, 24 or 32 bytes); default: inherited with --inherit-ca-from, else generated")
	f.BoolVar(&dryRun, "dry-run", false, "print the manifests enable would apply (without the certificate Secrets) and change nothing")
	f.DurationVar(&waitFor, "wait-duration", mesh.DefaultStoreWait, "how long to wait, with progress, until the cluster's store serves (its apiserver started), so that connect can follow at once; 0 does not wait, a negative value checks once")
	f.StringVar(&opts.CoreDNS, "coredns", mesh.CoreDNSAuto, "make <service>.<namespace>.svc.clusterset.local resolve (Multi-Cluster Services): auto (add the multicluster plugin to CoreDNS's Corefile, check that CoreDNS loads it, roll back if not), configure (add it without checking) or skip")
	f.DurationVar(&opts.CoreDNSWait, "coredns-wait", mesh.DefaultCoreDNSWait, "how long --coredns auto waits for CoreDNS to reload its Corefile")
	f.BoolVar(&opts.ReplaceCA, "replace-ca", false, "replace a different CA the cluster already has (re-issues every certificate)")
	_ = cmd.MarkFlagRequired("cluster-name")
	_ = cmd.MarkFlagRequired("cluster-id")
	_ = cmd.RegisterFlagCompletionFunc("inherit-ca-from", g.completeContexts)
	_ = cmd.RegisterFlagCompletionFunc("service-type", cobra.FixedCompletions([]string{"NodePort", "LoadBalancer", "ClusterIP"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func loadCAFiles(certFile, keyFile string) (*pki.CA, error) {
	cp, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	kp, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-key: %w", err)
	}
	ca, err := pki.LoadCA(cp, kp)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert/--ca-key: %w", err)
	}
	return ca, nil
}

package emulator

import (
	"fmt"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig returns the path of the run's merged kubeconfig: one context per
// cluster with a control plane, named after the cluster ("c1", "c2" …), as
// kind names its contexts. The CLI and kubectl are pointed at it.
func (r *Run) Kubeconfig() string { return filepath.Join(r.Dir, "kubeconfig") }

// writeKubeconfig (re)writes the merged kubeconfig from every control plane.
// The current context is the first cluster's.
func (r *Run) writeKubeconfig() error {
	merged := clientcmdapi.NewConfig()
	for _, c := range r.Clusters() {
		cp := c.ControlPlane()
		if cp == nil {
			continue
		}
		kc, err := clientcmd.LoadFromFile(cp.Kubeconfig)
		if err != nil {
			return fmt.Errorf("cluster %s: kubeconfig: %w", c.Name, err)
		}
		ctx, ok := kc.Contexts[kc.CurrentContext]
		if !ok {
			return fmt.Errorf("cluster %s: kubeconfig %s: no current context", c.Name, cp.Kubeconfig)
		}
		merged.Clusters[c.Name] = kc.Clusters[ctx.Cluster]
		merged.AuthInfos[c.Name+"-admin"] = kc.AuthInfos[ctx.AuthInfo]
		merged.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name + "-admin", Namespace: "default"}
		if merged.CurrentContext == "" {
			merged.CurrentContext = c.Name
		}
	}
	if err := clientcmd.WriteToFile(*merged, r.Kubeconfig()); err != nil {
		return fmt.Errorf("run %s: write kubeconfig: %w", r.Prefix, err)
	}
	return nil
}

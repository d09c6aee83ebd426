package drills

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// mcsService is the service the MCS drill exports with a ServiceExport.
const mcsService = "mcs"

var (
	mcsExportGVR = deploy.ServiceExportGVR(deploy.MCSVersion)
	mcsImportGVR = deploy.ServiceImportGVR(deploy.MCSVersion)
)

// mcsClients are the Kubernetes clients of one cluster.
type mcsClients struct {
	kube kubernetes.Interface
	dyn  dynamic.Interface
}

func newMCSClients(kubeconfig string) (mcsClients, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return mcsClients{}, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return mcsClients{}, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	return mcsClients{kube: kube, dyn: dyn}, err
}

func (c mcsClients) export(ctx context.Context) error {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": deploy.MCSGroup + "/" + deploy.MCSVersion, "kind": "ServiceExport",
		"metadata": map[string]any{"name": mcsService, "namespace": "default"},
	}}
	_, err := c.dyn.Resource(mcsExportGVR).Namespace("default").Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (c mcsClients) unexport(ctx context.Context) error {
	err := c.dyn.Resource(mcsExportGVR).Namespace("default").Delete(ctx, mcsService, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// derived returns the name of the derived Service of the import of
// mcsService once its ServiceImport carries the derived Service's
// clusterset IP.
func (c mcsClients) derived(ctx context.Context) (string, error) {
	si, err := c.dyn.Resource(mcsImportGVR).Namespace("default").Get(ctx, mcsService, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	ips, _, _ := unstructured.NestedStringSlice(si.Object, "spec", "ips")
	if len(ips) == 0 {
		return "", errors.New("ServiceImport has no clusterset IP yet")
	}
	svcs, err := c.kube.CoreV1().Services("default").List(ctx, metav1.ListOptions{LabelSelector: "multicluster.kubernetes.io/service-name=" + mcsService})
	if err != nil {
		return "", err
	}
	for _, s := range svcs.Items {
		if s.Spec.ClusterIP == ips[0] {
			return s.Name, nil
		}
	}
	return "", fmt.Errorf("no derived Service with the clusterset IP %s", ips[0])
}

// MCS: the Multi-Cluster Services API end to end. A service exists only in
// c2 (Deployment, Service, ServiceExport); c1 gets its ServiceImport and
// derived Service with no action of its own, and a probe in c1 aimed at
// the clusterset IP is answered by c2's pods. Then c1 exports the service
// too (the clusterset IP spreads over both clusters) and c2's backends go
// away: traffic moves to c1 with no failed attempt. Last, withdrawing the
// ServiceExports removes the import. Figures: export → import with its
// clusterset IP, export → first answer from c2, failover time and failed
// attempts, unexport → import gone.
func MCS(ctx context.Context, e *Env) error {
	m, c1, c2 := e.Mesh, e.c(0), e.c(1)
	mcs := &Env{Mesh: m, Service: mcsService, Replicas: 2, Report: e.Report, Logf: e.Logf, Wait: e.Wait}
	k1, err := newMCSClients(m.Kubeconfig(c1))
	if err != nil {
		return err
	}
	k2, err := newMCSClients(m.Kubeconfig(c2))
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.wait())
		defer cancel()
		_ = k1.unexport(cctx)
		_ = k2.unexport(cctx)
	}()
	if err := m.DeployEcho(ctx, c2, mcsService, mcs.Replicas); err != nil {
		return err
	}
	if err := mcs.waitReadyPods(ctx, c2, mcs.Replicas); err != nil {
		return err
	}
	exported := time.Now()
	if err := k2.export(ctx); err != nil {
		return fmt.Errorf("cluster %s: ServiceExport: %w", c2, err)
	}
	var derived string
	wctx, cancel := context.WithTimeout(ctx, e.wait())
	err = poll.Until(wctx, func(ctx context.Context) error {
		var err error
		derived, err = k1.derived(ctx)
		return err
	})
	cancel()
	if err != nil {
		return fmt.Errorf("%w: %s: no ServiceImport of default/%s exported by %s: %v", ErrDrill, c1, mcsService, c2, err)
	}
	imported := time.Now()
	e.Report.Add("mcs", fmt.Sprintf("ServiceExport in %s → ServiceImport with clusterset IP in %s", c2, c1), emulator.Ms(imported.Sub(exported)), "pass")

	tr, err := m.StartTraffic(ctx, e.firstNode(c1), derived, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	first, err := mcs.waitOnly(ctx, tr, imported, 20, c2)
	if err != nil {
		return fmt.Errorf("clusterset IP from %s: %w", c1, err)
	}
	e.Report.Add("mcs", fmt.Sprintf("ServiceExport in %s → %s's probe of the clusterset IP answered by %s", c2, c1, c2), emulator.Ms(first.At.Sub(exported)), "pass")
	e.logf("clusterset IP of default/%s (Service %s) in %s answered by %s", mcsService, derived, c1, c2)

	// By name, where the cluster has DNS (kind: CoreDNS with the
	// multicluster plugin `enable` configured): the probe resolves
	// <service>.default.svc.clusterset.local at every attempt.
	var byName Traffic
	name := ClustersetName("default", mcsService)
	if nm, ok := m.(NameTrafficMesh); ok {
		started := time.Now()
		byName, err = nm.StartNameTraffic(ctx, e.firstNode(c1), name, derived, "tcp")
		if err != nil {
			return err
		}
		defer stop(byName)
		a, err := mcs.waitOnly(ctx, byName, started, 20, c2)
		if err != nil {
			return fmt.Errorf("%s from %s (the cluster's DNS): %w", name, c1, err)
		}
		e.Report.Add("mcs", fmt.Sprintf("%s's probe of %s (resolved by CoreDNS) answered by %s, after the probe started", c1, name, c2), emulator.Ms(a.At.Sub(started)), "pass")
	}

	// c1 exports the service too: its pods join the clusterset IP.
	if err := m.DeployEcho(ctx, c1, mcsService, mcs.Replicas); err != nil {
		return err
	}
	if err := mcs.waitReadyPods(ctx, c1, mcs.Replicas); err != nil {
		return err
	}
	both := time.Now()
	if err := k1.export(ctx); err != nil {
		return fmt.Errorf("cluster %s: ServiceExport: %w", c1, err)
	}
	seen, err := mcs.waitSeen(ctx, tr, both, c1, c2)
	if err != nil {
		return fmt.Errorf("after %s exported too: %w", c1, err)
	}
	e.Report.Add("mcs", fmt.Sprintf("%s exports too → clusterset IP answered by both after", c1), emulator.Ms(seen.Sub(both)), "pass")

	// c2's backends go away: traffic moves to c1.
	failed := time.Now()
	if err := m.ScaleEcho(ctx, c2, mcsService, 0); err != nil {
		return err
	}
	moved, err := mcs.waitOnly(ctx, tr, failed, 50, c1)
	if err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	if byName != nil {
		// The name follows the failover too. Its attempts also depend on
		// DNS answering in time, so they are reported, not held to zero
		// failures as the clusterset IP's are.
		a, err := mcs.waitOnly(ctx, byName, failed, 50, c1)
		if err != nil {
			return fmt.Errorf("failover by %s: %w", name, err)
		}
		e.Report.Add("mcs", fmt.Sprintf("by name: only %s after (failed attempts)", c1), fmt.Sprintf("%s (%d)", emulator.Ms(a.At.Sub(failed)), failures(byName.Attempts(failed))), "pass")
	}
	if err := settle(ctx, time.Second); err != nil {
		return err
	}
	fails := failures(tr.Attempts(failed))
	verdict := "pass"
	if fails > 0 {
		verdict = "FAIL"
	}
	e.Report.Add("mcs", fmt.Sprintf("%s scaled to 0 → clusterset IP only on %s after", c2, c1), emulator.Ms(moved.At.Sub(failed)), "pass")
	e.Report.Add("mcs", "failed attempts during the failover", fmt.Sprintf("%d (%s)", fails, mcs.split(tr.Attempts(failed))), verdict)
	e.logf("failover of the clusterset IP to %s after %v, %d failed attempts", c1, moved.At.Sub(failed), fails)
	if fails > 0 {
		return fmt.Errorf("%w: %d failed attempts during the failover of the clusterset IP (%s)", ErrDrill, fails, mcs.split(tr.Attempts(failed)))
	}

	// Withdrawing every ServiceExport removes the import.
	stop(tr)
	gone := time.Now()
	for _, k := range []mcsClients{k1, k2} {
		if err := k.unexport(ctx); err != nil {
			return err
		}
	}
	wctx, cancel = context.WithTimeout(ctx, e.wait())
	defer cancel()
	err = poll.Until(wctx, func(ctx context.Context) error {
		_, err := k1.dyn.Resource(mcsImportGVR).Namespace("default").Get(ctx, mcsService, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("ServiceImport default/%s still in %s (%v)", mcsService, c1, err)
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDrill, err)
	}
	e.Report.Add("mcs", fmt.Sprintf("ServiceExports withdrawn → import gone from %s after", c1), emulator.Ms(time.Since(gone)), "pass")
	for _, c := range []string{c1, c2} {
		if err := m.ScaleEcho(ctx, c, mcsService, 0); err != nil {
			return err
		}
	}
	return nil
}

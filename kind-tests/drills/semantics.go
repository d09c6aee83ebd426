package drills

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/attempts"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// semService is the global service the ServiceSemantics drill deploys
// beside the main one, two pods per cluster.
const semService = "sem"

// ServiceSemantics: a second global service, two pods in every cluster,
// traffic from the first node of c1 while c1's Service spec changes:
//   - internalTrafficPolicy Local: answers only from pods on that node (or,
//     with none there, every attempt fails at once);
//   - trafficDistribution PreferClose: answers only from c1's pods in the
//     node's zone (the emulator gives each node its own zone), or from c1's
//     pods when the node's zone has none;
//   - sessionAffinity ClientIP: every answer from one pod, where without it
//     answers spread over both clusters.
func ServiceSemantics(ctx context.Context, e *Env) error {
	m, c1 := e.Mesh, e.c(0)
	node := e.firstNode(c1)
	kube, err := kubeClient(m.Kubeconfig(c1))
	if err != nil {
		return err
	}
	sem := &Env{Mesh: m, Service: semService, Replicas: 2, Report: e.Report, Logf: e.Logf, Wait: e.Wait}
	for _, c := range m.Clusters() {
		if err := m.DeployEcho(ctx, c, semService, 2); err != nil {
			return err
		}
	}
	for _, c := range m.Clusters() {
		if err := sem.waitReadyPods(ctx, c, 2); err != nil {
			return err
		}
	}
	if err := m.MarkGlobal(ctx, semService, "none"); err != nil {
		return err
	}
	tr, err := m.StartTraffic(ctx, node, semService, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	if _, err := sem.waitSeen(ctx, tr, time.Now(), m.Clusters()...); err != nil {
		return fmt.Errorf("before: %w", err)
	}

	spec := func(patch string) error {
		_, err := kube.CoreV1().Services("default").Patch(ctx, semService, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}
	// observe patches the spec, waits until the answers satisfy ok for
	// 30 attempts in a row and returns the next second of attempts.
	observe := func(what, patch string, ok func(attempts.Attempt) bool) ([]attempts.Attempt, time.Duration, error) {
		at := time.Now()
		if err := spec(patch); err != nil {
			return nil, 0, err
		}
		wctx, cancel := context.WithTimeout(ctx, e.wait())
		defer cancel()
		first, err := tr.WaitFor(wctx, at, 30, ok)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %s: %v (%s)", ErrDrill, what, err, sem.split(tr.Attempts(at)))
		}
		mark := time.Now()
		if err := settle(ctx, time.Second); err != nil {
			return nil, 0, err
		}
		as := tr.Attempts(mark)
		for _, a := range as {
			if !ok(a) {
				return nil, 0, fmt.Errorf("%w: %s: attempt %+v breaks it (%s)", ErrDrill, what, a, sem.split(as))
			}
		}
		return as, first.At.Sub(at), nil
	}

	// internalTrafficPolicy: Local.
	onNode, err := m.EchoPodsOn(ctx, node, semService)
	if err != nil {
		return err
	}
	localOK := func(a attempts.Attempt) bool { return a.OK && slices.Contains(onNode, a.Backend) }
	if len(onNode) == 0 {
		localOK = func(a attempts.Attempt) bool { return !a.OK }
	}
	as, took, err := observe("internalTrafficPolicy Local", `{"spec":{"internalTrafficPolicy":"Local"}}`, localOK)
	if err != nil {
		return err
	}
	e.Report.Add("service semantics", fmt.Sprintf("internalTrafficPolicy Local: only %s's pods %v, after", node, onNode), emulator.Ms(took), "pass")
	e.Report.Add("service semantics", "internalTrafficPolicy Local over 1 s", sem.split(as), "pass")

	// trafficDistribution: PreferClose.
	near, err := closePods(ctx, kube, node, semService)
	if err != nil {
		return err
	}
	as, took, err = observe("trafficDistribution PreferClose", `{"spec":{"internalTrafficPolicy":"Cluster","trafficDistribution":"PreferClose"}}`,
		func(a attempts.Attempt) bool { return a.OK && slices.Contains(near, a.Backend) })
	if err != nil {
		return err
	}
	e.Report.Add("service semantics", fmt.Sprintf("PreferClose: only pods %v (zone, else cluster), after", near), emulator.Ms(took), "pass")
	e.Report.Add("service semantics", "PreferClose over 1 s", sem.split(as), "pass")

	// sessionAffinity: ClientIP: once the last 30 answers all come from
	// one pod, the next second's must too.
	at := time.Now()
	if err := spec(`{"spec":{"trafficDistribution":null,"sessionAffinity":"ClientIP"}}`); err != nil {
		return err
	}
	var stuck string
	wctx, cancel := context.WithTimeout(ctx, e.wait())
	defer cancel()
	err = poll.Until(wctx, func(context.Context) error {
		as := tr.Attempts(at)
		if len(as) < 30 {
			return fmt.Errorf("%d attempts", len(as))
		}
		last := as[len(as)-30:]
		for _, a := range last {
			if !a.OK || a.Backend != last[0].Backend {
				return fmt.Errorf("answers still vary: %s", sem.split(last))
			}
		}
		stuck = last[0].Backend
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: sessionAffinity ClientIP: %v", ErrDrill, err)
	}
	took = time.Since(at)
	mark := time.Now()
	if err := settle(ctx, time.Second); err != nil {
		return err
	}
	as = tr.Attempts(mark)
	for _, a := range as {
		if !a.OK || a.Backend != stuck {
			return fmt.Errorf("%w: sessionAffinity ClientIP: attempt %+v left %s (%s)", ErrDrill, a, stuck, sem.split(as))
		}
	}
	e.Report.Add("service semantics", fmt.Sprintf("sessionAffinity ClientIP: one pod (%s), within", stuck), emulator.Ms(took), "pass")
	e.Report.Add("service semantics", "sessionAffinity over 1 s", sem.split(as), "pass")
	return spec(`{"spec":{"sessionAffinity":"None"}}`)
}

// closePods names the pods of service in the node's cluster that
// PreferClose prefers from node: those on nodes of its zone, or all of the
// cluster's when the zone has none (or the node has no zone).
func closePods(ctx context.Context, kube kubernetes.Interface, node, service string) ([]string, error) {
	n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	zone := n.Labels[corev1.LabelTopologyZone]
	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	zoneOf := map[string]string{}
	for _, x := range nodes.Items {
		zoneOf[x.Name] = x.Labels[corev1.LabelTopologyZone]
	}
	var all, near []string
	err = poll.Until(ctx, func(ctx context.Context) error {
		pods, err := kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + service})
		if err != nil {
			return err
		}
		all, near = nil, nil
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Spec.NodeName == "" {
				continue
			}
			all = append(all, p.Name)
			if zone != "" && zoneOf[p.Spec.NodeName] == zone {
				near = append(near, p.Name)
			}
		}
		if len(all) == 0 {
			return fmt.Errorf("no %s pod", service)
		}
		return nil
	})
	if len(near) > 0 {
		return near, err
	}
	return all, err
}

package drills

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/kind-tests/attempts"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// NeedPodTraffic marks drills whose probes must run inside a pod (policy is
// about which pod connects): the emulator can; kind clusters skip them.
const NeedPodTraffic = "pod-traffic"

// PodProbeTimeout bounds each attempt of a pod's probe: a dropped SYN
// fails after it, so it is the resolution of the Policy drill's figures.
const PodProbeTimeout = 100 * time.Millisecond

// PodTrafficMesh is a Mesh that runs probes inside pods of a given name
// and labels (policy is about which pod connects).
type PodTrafficMesh interface {
	Mesh
	// StartPodTraffic starts a probe inside pod default/name of cluster,
	// creating the pod with labels if it does not exist, to the service's
	// ClusterIP there. The pod's labels may be changed while it runs.
	// Each attempt fails after timeout (0: the mesh's default, as
	// StartTraffic's).
	StartPodTraffic(ctx context.Context, cluster, name string, labels map[string]string, service, proto string, timeout time.Duration) (Traffic, error)
}

// policyName is the NetworkPolicy the Policy drill creates in c1.
const policyName = "drill-api"

// relabelCycles is how many times the Policy drill moves a pod in and out
// of the allowed set, for percentiles of the propagation.
const relabelCycles = 8

// percentiles formats the p50 and p99 of ds.
func percentiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p int) time.Duration { return s[(len(s)-1)*p/100] }
	return emulator.Ms(at(50)) + " / " + emulator.Ms(at(99))
}

// Policy: a NetworkPolicy in c1 admits to its echo pods only pods labelled
// app=frontend of cluster c2, on TCP. Two client pods of c2 send to the
// global service: frontend is answered by both clusters; intruder only by
// c2 (its connections to c1 are dropped before the pods); frontend's UDP
// only by c2. Relabelling intruder as a frontend lets it in; relabelling it
// back shuts it out; deleting the policy opens c1 again. Figures: each
// change → enforced on c1's nodes, measured on real traffic.
func Policy(ctx context.Context, e *Env) error {
	m, ok := e.Mesh.(PodTrafficMesh)
	if !ok {
		return fmt.Errorf("%w: %s cannot run probes in pods", ErrDrill, e.Mesh.Environment())
	}
	c1, c2 := e.c(0), e.c(1)
	kube1, err := kubeClient(e.Mesh.Kubeconfig(c1))
	if err != nil {
		return err
	}
	kube2, err := kubeClient(e.Mesh.Kubeconfig(c2))
	if err != nil {
		return err
	}
	defer func() {
		bg := context.WithoutCancel(ctx)
		for _, name := range []string{"policy-frontend", "policy-intruder", "policy-frontend-udp"} {
			_ = kube2.CoreV1().Pods("default").Delete(bg, name, metav1.DeleteOptions{})
		}
		_ = kube1.NetworkingV1().NetworkPolicies("default").Delete(bg, policyName, metav1.DeleteOptions{})
	}()
	probe := func(pod, app, proto string) (Traffic, error) {
		return m.StartPodTraffic(ctx, c2, pod, map[string]string{"app": app}, e.Service, proto, PodProbeTimeout)
	}
	front, err := probe("policy-frontend", "frontend", "tcp")
	if err != nil {
		return err
	}
	defer stop(front)
	intr, err := probe("policy-intruder", "intruder", "tcp")
	if err != nil {
		return err
	}
	defer stop(intr)
	start := time.Now()
	for _, tr := range []Traffic{front, intr} {
		if _, err := e.waitSeen(ctx, tr, start, c1, c2); err != nil {
			return fmt.Errorf("before the policy: %w", err)
		}
	}

	created := time.Now()
	if _, err := kube1.NetworkingV1().NetworkPolicies("default").Create(ctx, frontendOnly(e.Service, c2), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("cluster %s: create policy: %w", c1, err)
	}
	shut, err := e.waitRefused(ctx, intr, created, c1)
	if err != nil {
		return fmt.Errorf("policy created: %w", err)
	}
	e.Report.Add("policy", "policy created in c1 → intruder of c2 refused after", emulator.Ms(shut.Sub(created)), "pass")
	mark := time.Now()
	if err := settle(ctx, 2*time.Second); err != nil {
		return err
	}
	if err := e.expectSplit(front.Attempts(mark), true, 0, c1, c2); err != nil {
		return fmt.Errorf("frontend (tcp) under the policy: %w", err)
	}
	if err := e.expectSplit(intr.Attempts(mark), false, -1, c2); err != nil {
		return fmt.Errorf("intruder (tcp) under the policy: %w", err)
	}
	e.Report.Add("policy", "frontend tcp (allowed) over 2 s", e.split(front.Attempts(mark)), "pass")
	e.Report.Add("policy", "intruder tcp (denied in c1) over 2 s", e.split(intr.Attempts(mark)), "pass")

	udp, err := probe("policy-frontend-udp", "frontend", "udp")
	if err != nil {
		return err
	}
	defer stop(udp)
	umark := time.Now()
	if _, err := e.waitSeen(ctx, udp, umark, c2); err != nil {
		return fmt.Errorf("frontend udp: %w", err)
	}
	if err := settle(ctx, 2*time.Second); err != nil {
		return err
	}
	if err := e.expectSplit(udp.Attempts(umark), false, -1, c2); err != nil {
		return fmt.Errorf("frontend udp (the policy allows TCP only): %w", err)
	}
	e.Report.Add("policy", "frontend udp (TCP only allowed) over 2 s", e.split(udp.Attempts(umark)), "pass")
	stop(udp)

	relabel := func(app string) (time.Time, error) {
		at := time.Now()
		patch := fmt.Sprintf(`{"metadata":{"labels":{"app":%q}}}`, app)
		_, err := kube2.CoreV1().Pods("default").Patch(ctx, "policy-intruder", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return at, err
	}
	// Propagation, end to end through both stores: c2's apiserver exports
	// the pod's new identity, c1's agents reprogram, measured on traffic.
	var ins, outs []time.Duration
	for i := 0; i < relabelCycles; i++ {
		at, err := relabel("frontend")
		if err != nil {
			return err
		}
		in, err := e.waitOnly(ctx, intr, at, 1, c1)
		if err != nil {
			return fmt.Errorf("intruder relabelled frontend (cycle %d): %w", i, err)
		}
		ins = append(ins, in.At.Sub(at))
		if at, err = relabel("intruder"); err != nil {
			return err
		}
		out, err := e.waitRefused(ctx, intr, at, c1)
		if err != nil {
			return fmt.Errorf("intruder relabelled back (cycle %d): %w", i, err)
		}
		outs = append(outs, out.Sub(at))
	}
	e.Report.Add("policy", fmt.Sprintf("relabel in c2 → allowed by c1, p50 / p99 of %d", relabelCycles), percentiles(ins), "pass")
	e.Report.Add("policy", fmt.Sprintf("relabel back → refused by c1, p50 / p99 of %d", relabelCycles), percentiles(outs), "pass")
	e.logf("label changes in %s enforced in %s: allow %s, deny %s", c2, c1, percentiles(ins), percentiles(outs))

	deleted := time.Now()
	if err := kube1.NetworkingV1().NetworkPolicies("default").Delete(ctx, policyName, metav1.DeleteOptions{}); err != nil {
		return err
	}
	open, err := e.waitOnly(ctx, intr, deleted, 1, c1)
	if err != nil {
		return fmt.Errorf("policy deleted: %w", err)
	}
	e.Report.Add("policy", "policy deleted → intruder answered by c1 after", emulator.Ms(open.At.Sub(deleted)), "pass")
	return nil
}

// waitRefused waits until, after since, an attempt fails and no attempt
// started later is answered by a pod of cluster, over one second; it
// returns when the first failure happened.
func (e *Env) waitRefused(ctx context.Context, tr Traffic, since time.Time, cluster string) (time.Time, error) {
	deadline := time.Now().Add(e.wait())
	for time.Now().Before(deadline) {
		as := tr.Attempts(since)
		var first time.Time
		for i, a := range as {
			if a.OK || !first.IsZero() {
				continue
			}
			rest := as[i:]
			if len(rest) > 0 && rest[len(rest)-1].At.Sub(a.At) >= time.Second && !containsFrom(e, rest, cluster) {
				first = a.At
			}
		}
		if !first.IsZero() {
			return first, nil
		}
		if err := settle(ctx, 100*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
	return time.Time{}, fmt.Errorf("%w: traffic from %s still answered by %s: %s", ErrDrill, tr.From(), cluster, e.split(tr.Attempts(since)))
}

func containsFrom(e *Env, as []attempts.Attempt, cluster string) bool {
	for _, a := range as {
		if e.from(cluster)(a) {
			return true
		}
	}
	return false
}

// expectSplit checks a window of attempts: every answer from one of
// clusters (and each of them answering when all is set); failures exactly
// wantFail, or at least one when wantFail is -1.
func (e *Env) expectSplit(as []attempts.Attempt, all bool, wantFail int, clusters ...string) error {
	seen := map[string]bool{}
	fails := 0
	for _, a := range as {
		if !a.OK {
			fails++
			continue
		}
		c := e.Mesh.ClusterOf(e.Service, a.Backend)
		if !slices.Contains(clusters, c) {
			return fmt.Errorf("%w: answer from %q, want only %v (%s)", ErrDrill, c, clusters, e.split(as))
		}
		seen[c] = true
	}
	if all && len(seen) != len(clusters) {
		return fmt.Errorf("%w: answers from %v, want every one of %v (%s)", ErrDrill, seen, clusters, e.split(as))
	}
	if (wantFail >= 0 && fails != wantFail) || (wantFail < 0 && fails == 0) {
		return fmt.Errorf("%w: %d failed attempts, want %d (-1: some) (%s; failures: %v)", ErrDrill, fails, wantFail, e.split(as), attempts.Summarize(as).Errors)
	}
	return nil
}

// frontendOnly admits to the echo pods only app=frontend pods of cluster
// peer, on the echo port over TCP.
func frontendOnly(service, peer string) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(emulator.EchoPort)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: policyName, Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": service}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
					"app": "frontend", "io.cilium.k8s.policy.cluster": peer,
				}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return kubernetes.NewForConfig(cfg)
}

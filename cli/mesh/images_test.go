package mesh_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/cli/internal/clitest"
	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/deploy"
)

// imagePod writes a mesh pod the way a kubelet reports one whose image
// cannot be had: spec through the API, container status through the
// status subresource.
func imagePod(t *testing.T, c *mesh.Cluster, name, app, image string, state corev1.ContainerState) {
	t.Helper()
	ctx := context.Background()
	pods := c.Kube.CoreV1().Pods(c.Namespace)
	p, err := pods.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		p, err = pods.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/name": app}},
			Spec: corev1.PodSpec{
				NodeName:   "node-c1",
				Containers: []corev1.Container{{Name: strings.TrimPrefix(app, "clustermesh-"), Image: image}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	p.Status.Phase = corev1.PodPending
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: p.Spec.Containers[0].Name, Image: "docker.io/" + image, State: state}}
	if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waiting(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

// TestImageNotAvailable: against a real kube-apiserver, pods of the mesh
// whose images the nodes cannot get make the store wait of enable fail at
// once, and status name each pod, container, image and reason, with the
// commands that build and load the images; once the containers run, the
// problem is gone. A connect to it stops at once too, naming only the
// apiserver's pod (the agents' do not keep its store down).
func TestImageNotAvailable(t *testing.T) {
	env := clitest.Start(t,
		clitest.Spec{Name: "c1", NodeIP: "127.0.0.21", PodCIDR: "10.21.0.0/24"},
		clitest.Spec{Name: "c2", NodeIP: "127.0.0.22", PodCIDR: "10.22.0.0/24"},
	)
	ctx := context.Background()
	c := env.Clusters["c1"].C
	if _, err := mesh.Enable(ctx, c, mesh.EnableOptions{ClusterName: "c1", ClusterID: 1}); err != nil {
		t.Fatal(err)
	}
	apiImage, agentImage := deploy.APIServerImage(), deploy.AgentImage()
	imagePod(t, c, "clustermesh-apiserver-0", mesh.StatefulSetName, apiImage,
		waiting("ErrImageNeverPull", `Container image "`+apiImage+`" is not present with pull policy of Never`))
	imagePod(t, c, "clustermesh-agent-a", mesh.DaemonSetName, agentImage, waiting("ImagePullBackOff", "Back-off pulling image"))
	imagePod(t, c, "clustermesh-agent-b", mesh.DaemonSetName, agentImage, waiting("ImagePullBackOff", "Back-off pulling image"))

	t.Run("the store wait stops at once", func(t *testing.T) {
		// A wait far longer than the test: a CheckError without "waited"
		// means it gave up on the image problem, not on the time.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		err := mesh.WaitStore(wctx, c, mesh.StoreOptions{}, mesh.StoreWait{For: 10 * time.Minute})
		var ce *mesh.CheckError
		if !errors.As(err, &ce) || !errors.Is(err, mesh.ErrImage) || strings.Contains(ce.Op, "waited") {
			t.Fatalf("err = %v; want a CheckError with %v, before the wait ran out", err, mesh.ErrImage)
		}
		if !strings.Contains(err.Error(), "clustermesh-apiserver-0") {
			t.Errorf("error does not name the apiserver's pod: %v", err)
		}
	})

	t.Run("status names pods, images and reasons", func(t *testing.T) {
		st, err := mesh.GetStatus(ctx, c, mesh.StatusOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Ready || len(st.Images) != 3 {
			t.Fatalf("ready %v, images %+v; want 3 containers waiting for their image", st.Ready, st.Images)
		}
		var ps []mesh.Problem
		for _, p := range st.Problems {
			if errors.Is(p.Err, mesh.ErrImage) {
				ps = append(ps, p)
			}
		}
		if len(ps) != 2 {
			t.Fatalf("image problems %v; want one per image and reason", ps)
		}
		for _, p := range ps {
			t.Log(p)
		}
		for _, tc := range []struct {
			p        mesh.Problem
			mentions []string
		}{
			{ps[0], []string{"pod clustermesh-agent-a (container agent), pod clustermesh-agent-b (container agent)", "image " + agentImage, "ImagePullBackOff",
				"kind load image-archive bin/images/clustermesh-agent-"}},
			{ps[1], []string{"pod clustermesh-apiserver-0 (container apiserver)", "image " + apiImage, "ErrImageNeverPull", "not present with pull policy",
				"kind load image-archive bin/images/clustermesh-apiserver-"}},
		} {
			text := tc.p.Reason + " fix: " + tc.p.Fix
			for _, m := range tc.mentions {
				if !strings.Contains(text, m) {
					t.Errorf("problem %q lacks %q", text, m)
				}
			}
		}
		if !strings.Contains(st.Problems[0].Reason, "cannot start: image") {
			t.Errorf("first problem %q; want the image problems before their consequences", st.Problems[0].Reason)
		}
	})

	t.Run("connect to it stops at once", func(t *testing.T) {
		// c2's store may be down as long as it likes; c1's apiserver pod
		// waits for its image, which connect says without waiting.
		c2 := env.Clusters["c2"].C
		key, err := c.GossipKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mesh.Enable(ctx, c2, mesh.EnableOptions{ClusterName: "c2", ClusterID: 2, GossipKey: key}); err != nil {
			t.Fatal(err)
		}
		err = mesh.Connect(ctx, c2, []*mesh.Cluster{c}, mesh.ConnectOptions{WaitFor: 10 * time.Minute})
		var ce *mesh.CheckError
		if !errors.As(err, &ce) || !errors.Is(err, mesh.ErrImage) || strings.Contains(ce.Op, "waited") {
			t.Fatalf("err = %v; want a CheckError with %v, before the wait ran out", err, mesh.ErrImage)
		}
		for _, p := range ce.Problems {
			if errors.Is(p.Err, mesh.ErrImage) && (!strings.Contains(p.Reason, "cluster c1 (context c1): pod clustermesh-apiserver-0") || strings.Contains(p.Reason, "agent")) {
				t.Errorf("problem %q; want c1's apiserver pod only", p.Reason)
			}
		}
	})

	t.Run("running containers are no problem", func(t *testing.T) {
		run := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
		imagePod(t, c, "clustermesh-apiserver-0", mesh.StatefulSetName, apiImage, run)
		imagePod(t, c, "clustermesh-agent-a", mesh.DaemonSetName, agentImage, run)
		imagePod(t, c, "clustermesh-agent-b", mesh.DaemonSetName, agentImage, waiting("CrashLoopBackOff", "back-off restarting"))
		st, err := mesh.GetStatus(ctx, c, mesh.StatusOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Images) != 0 {
			t.Errorf("images %+v; want none once no container waits for its image", st.Images)
		}
		for _, p := range st.Problems {
			if errors.Is(p.Err, mesh.ErrImage) {
				t.Errorf("problem %q remains", p.Reason)
			}
		}
	})
}

package mesh

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
)

// imageWaitReasons are the kubelet's reasons for a container that cannot
// start because of its image. Waiting does not fix them on a cluster that
// reaches no registry, such as kind with images built here.
var imageWaitReasons = []string{"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"}

// ImageWait is a container of one of the mesh's pods that cannot start
// because of its image.
type ImageWait struct {
	Pod       string `json:"pod"`
	Container string `json:"container"`
	Image     string `json:"image"`
	// Reason is the kubelet's: ImagePullBackOff, ErrImagePull,
	// ErrImageNeverPull or InvalidImageName.
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	// Agent is true for a pod of the agents' DaemonSet (else the
	// apiserver's), to name the enable flag that sets its image.
	Agent bool `json:"-"`
}

// ImageWaits lists the containers (init containers included) of the pods in
// the mesh's namespace that wait for their image, by pod and container.
func (c *Cluster) ImageWaits(ctx context.Context) ([]ImageWait, error) {
	pods, err := c.Kube.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: list pods in %s: %w", c.Context, c.Namespace, err)
	}
	var ws []ImageWait
	for _, p := range pods.Items {
		for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			w := cs.State.Waiting
			if w == nil || !slices.Contains(imageWaitReasons, w.Reason) {
				continue
			}
			ws = append(ws, ImageWait{Pod: p.Name, Container: cs.Name, Image: specImage(&p, cs), Reason: w.Reason, Message: w.Message,
				Agent: p.Labels["app.kubernetes.io/name"] == DaemonSetName})
		}
	}
	sort.Slice(ws, func(i, j int) bool {
		if ws[i].Pod != ws[j].Pod {
			return ws[i].Pod < ws[j].Pod
		}
		return ws[i].Container < ws[j].Container
	})
	return ws, nil
}

// specImage is the image the pod asks for: the status may report it
// normalized (docker.io/...) or, before a pull, not at all.
func specImage(p *corev1.Pod, cs corev1.ContainerStatus) string {
	for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		if c.Name == cs.Name {
			return c.Image
		}
	}
	return cs.Image
}

// imageProblems makes one problem per image and reason, naming the pods and
// containers, with the way to get the image onto the nodes: for the
// project's own images, build them and load them (kind has no registry to
// pull them from).
func (c *Cluster) imageProblems(ws []ImageWait) []Problem {
	type key struct{ image, reason string }
	var order []key
	groups := map[key][]ImageWait{}
	for _, w := range ws {
		k := key{w.Image, w.Reason}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], w)
	}
	var ps []Problem
	for _, k := range order {
		g := groups[k]
		var where []string
		for _, w := range g {
			where = append(where, fmt.Sprintf("pod %s (container %s)", w.Pod, w.Container))
		}
		reason := fmt.Sprintf("%s cannot start: image %s: %s", strings.Join(where, ", "), k.image, k.reason)
		if m := g[0].Message; m != "" {
			reason += " (" + m + ")"
		}
		ps = append(ps, problem(ErrImage, c.imageFix(g[0]), "%s", reason))
	}
	return ps
}

// apiserverImageProblems are the image problems of the cluster's
// clustermesh-apiserver pods, the ones that keep its store from answering,
// each naming the cluster; none when the pods cannot be listed.
func (c *Cluster) apiserverImageProblems(ctx context.Context, cluster string) []Problem {
	waits, err := c.ImageWaits(ctx)
	if err != nil {
		return nil
	}
	waits = slices.DeleteFunc(waits, func(w ImageWait) bool { return w.Agent })
	ps := c.imageProblems(waits)
	for i := range ps {
		ps[i].Reason = fmt.Sprintf("cluster %s (context %s): %s", cluster, c.Context, ps[i].Reason)
	}
	return ps
}

func (c *Cluster) imageFix(w ImageWait) string {
	flag := "--apiserver-image"
	if w.Agent {
		flag = "--agent-image"
	}
	reenable := fmt.Sprintf("clustermesh enable %s ... %s IMAGE", c.ctxFlag(), flag)
	if w.Reason == "InvalidImageName" {
		return "name a valid image: re-run " + reenable
	}
	if !deploy.OwnImage(w.Image) {
		return fmt.Sprintf("make %s available to the nodes (push it to a registry they pull from, or load it into them: kind load docker-image %s --name %s), or re-run %s naming one they have",
			w.Image, w.Image, c.kindName(), reenable)
	}
	repo, tag := deploy.SplitImage(w.Image)
	file := "bin/images/" + deploy.ArchiveFile(w.Image)
	if tag == "dev" {
		// A CLI from plain go build names images nobody builds: make
		// tags them with the version from git.
		file = "bin/images/" + deploy.ArchiveFile(repo+":VERSION")
		return fmt.Sprintf("this clustermesh was built without a version (go build), so no image is tagged dev: run make build images, kind load image-archive %s --name %s (VERSION: what bin/clustermesh version prints), then bin/clustermesh enable again",
			file, c.kindName())
	}
	return fmt.Sprintf("build and load this version's images: make images in a checkout of clustermesh %s, then kind load image-archive %s --name %s; elsewhere push the image to a registry the nodes pull from, or re-run %s",
		tag, file, c.kindName(), reenable)
}

// kindName is the kind cluster behind the context, named by kind's
// "kind-NAME" contexts, or a placeholder.
func (c *Cluster) kindName() string {
	if n, ok := strings.CutPrefix(c.Context, "kind-"); ok && n != "" {
		return n
	}
	return "<kind cluster>"
}

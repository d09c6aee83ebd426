package mesh

import (
	"strings"
	"testing"
)

func TestImageFix(t *testing.T) {
	for _, tc := range []struct {
		name     string
		context  string
		w        ImageWait
		mentions []string
		not      []string
	}{
		{"own agent image on kind", "kind-cm-c1", ImageWait{Image: "clustermesh/clustermesh-agent:v0.4.0", Reason: "ImagePullBackOff", Agent: true},
			[]string{"make images in a checkout of clustermesh v0.4.0", "kind load image-archive bin/images/clustermesh-agent-v0.4.0.tar --name cm-c1", "--agent-image IMAGE"}, []string{"--apiserver-image"}},
		{"own apiserver image, normalized", "prod", ImageWait{Image: "docker.io/clustermesh/clustermesh-apiserver:v0.4.0", Reason: "ErrImageNeverPull"},
			[]string{"kind load image-archive bin/images/clustermesh-apiserver-v0.4.0.tar --name <kind cluster>", "--apiserver-image IMAGE"}, nil},
		{"unversioned CLI", "kind-a", ImageWait{Image: "clustermesh/clustermesh-agent:dev", Reason: "ErrImagePull", Agent: true},
			[]string{"built without a version", "make build images", "bin/images/clustermesh-agent-VERSION.tar --name a", "bin/clustermesh enable again"}, []string{"agent-dev.tar"}},
		{"foreign image", "kind-a", ImageWait{Image: "registry.example/agent:v9", Reason: "ImagePullBackOff", Agent: true},
			[]string{"make registry.example/agent:v9 available", "kind load docker-image registry.example/agent:v9 --name a", "--agent-image"}, []string{"make images"}},
		{"invalid name", "kind-a", ImageWait{Image: "Bad Image", Reason: "InvalidImageName"},
			[]string{"name a valid image", "--apiserver-image IMAGE"}, []string{"kind load"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Cluster{Context: tc.context, Namespace: "clustermesh-system"}
			fix := c.imageFix(tc.w)
			for _, m := range tc.mentions {
				if !strings.Contains(fix, m) {
					t.Errorf("fix %q lacks %q", fix, m)
				}
			}
			for _, m := range tc.not {
				if strings.Contains(fix, m) {
					t.Errorf("fix %q mentions %q", fix, m)
				}
			}
		})
	}
}

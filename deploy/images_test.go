package deploy

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/clustermesh/clustermesh/internal/version"
)

// The manifests name this build's images, tagged with its version, unless
// the values say otherwise.
func TestDefaultImages(t *testing.T) {
	old := version.Version
	version.Version = "v1.2.3-4-gabcdef"
	t.Cleanup(func() { version.Version = old })
	images := func(v Values) map[string]string {
		t.Helper()
		v.ClusterName, v.ClusterID = "c1", 1
		objs, err := RenderAll(v)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, o := range objs {
			ctrs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			for _, c := range ctrs {
				got[o.GetKind()+"/"+c.(map[string]any)["name"].(string)] = c.(map[string]any)["image"].(string)
			}
		}
		return got
	}
	got := images(DefaultValues())
	if len(got) == 0 {
		t.Fatal("no container rendered")
	}
	for ctr, img := range got {
		repo, tag, _ := strings.Cut(img, ":")
		if tag != "v1.2.3-4-gabcdef" || (repo != APIServerRepository && repo != AgentRepository) {
			t.Errorf("%s runs %s, want %s or %s tagged v1.2.3-4-gabcdef", ctr, img, APIServerRepository, AgentRepository)
		}
	}
	v := DefaultValues()
	v.APIServerImage, v.AgentImage = "example.com/a:v9", "example.com/b:v9"
	for ctr, img := range images(v) {
		if img != "example.com/a:v9" && img != "example.com/b:v9" {
			t.Errorf("%s runs %s despite the values naming other images", ctr, img)
		}
	}
}

func TestImageRefs(t *testing.T) {
	for _, tc := range []struct {
		ref, repo, tag, file string
		own                  bool
	}{
		{"clustermesh/clustermesh-agent:v0.4.0", "clustermesh/clustermesh-agent", "v0.4.0", "clustermesh-agent-v0.4.0.tar", true},
		{"docker.io/clustermesh/clustermesh-apiserver:79f74c9-dirty", "docker.io/clustermesh/clustermesh-apiserver", "79f74c9-dirty", "clustermesh-apiserver-79f74c9-dirty.tar", true},
		{"localhost:5000/clustermesh/clustermesh-agent:v1@sha256:abc", "localhost:5000/clustermesh/clustermesh-agent", "v1", "clustermesh-agent-v1.tar", false},
		{"localhost:5000/agent", "localhost:5000/agent", "", "", false},
		{"ghcr.io/clustermesh/clustermesh-agent:latest", "ghcr.io/clustermesh/clustermesh-agent", "latest", "clustermesh-agent-latest.tar", false},
	} {
		repo, tag := SplitImage(tc.ref)
		if repo != tc.repo || tag != tc.tag || ArchiveFile(tc.ref) != tc.file || OwnImage(tc.ref) != tc.own {
			t.Errorf("%s: repo %q tag %q file %q own %v; want %q %q %q %v", tc.ref, repo, tag, ArchiveFile(tc.ref), OwnImage(tc.ref), tc.repo, tc.tag, tc.file, tc.own)
		}
	}
}

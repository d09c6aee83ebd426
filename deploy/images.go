package deploy

import (
	"path"
	"strings"

	"github.com/clustermesh/clustermesh/internal/version"
)

// Repositories of the images `make images` builds (internal/image). They
// are tagged with the build's version, so the manifests a CLI renders name
// the images of that same build: an agent and apiserver that speak the
// store schema this CLI writes and reads.
const (
	APIServerRepository = "clustermesh/clustermesh-apiserver"
	AgentRepository     = "clustermesh/clustermesh-agent"
)

// APIServerImage is the clustermesh-apiserver image of this build.
func APIServerImage() string { return APIServerRepository + ":" + version.Version }

// AgentImage is the clustermesh-agent image of this build.
func AgentImage() string { return AgentRepository + ":" + version.Version }

// ArchiveFile is the name of the archive `make images` writes for an image
// reference: the repository's last element and the tag,
// "clustermesh-agent-v0.4.0.tar" for "clustermesh/clustermesh-agent:v0.4.0"
// (a registry prefix such as docker.io/ does not matter). It is "" for a
// reference without a tag.
func ArchiveFile(ref string) string {
	repo, tag := SplitImage(ref)
	if tag == "" {
		return ""
	}
	return path.Base(repo) + "-" + tag + ".tar"
}

// SplitImage splits an image reference into its repository (registry
// included, if given) and tag, dropping a digest; tag is "" when the
// reference has none.
func SplitImage(ref string) (repo, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

// OwnImage reports whether ref names one of the repositories `make images`
// builds (with or without Docker Hub's docker.io/ prefix, which container
// runtimes add), the images a user loads rather than pulls.
func OwnImage(ref string) bool {
	repo, _ := SplitImage(ref)
	repo = strings.TrimPrefix(repo, "docker.io/")
	return repo == APIServerRepository || repo == AgentRepository
}

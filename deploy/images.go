package deploy

import "github.com/clustermesh/clustermesh/internal/version"

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

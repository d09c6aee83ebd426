package image

import (
	"path/filepath"

	"github.com/clustermesh/clustermesh/deploy"
)

// Repositories of the drills' programs (kind-tests/cmd/echo and probe); the
// product's two are deploy.APIServerRepository and deploy.AgentRepository.
const (
	EchoRepository  = "clustermesh/echo"
	ProbeRepository = "clustermesh/probe"
)

// NonRoot is the user of every image but the agent's: the uid and gid
// distroless calls "nonroot", so a pod passes Pod Security's restricted
// profile (runAsNonRoot) without naming a user.
const NonRoot = "65532:65532"

// Release lists the images `make images` builds, from the static binaries
// named after their commands in binDir (clustermesh-apiserver,
// clustermesh-agent, echo, probe), all tagged tag. The agent runs as root:
// it loads eBPF programs and writes routes.
func Release(binDir, tag, arch string) []Spec {
	spec := func(repo, bin, user string) Spec {
		return Spec{Repository: repo, Tag: tag, Binary: filepath.Join(binDir, bin), Arch: arch, User: user,
			Labels: map[string]string{"org.opencontainers.image.source": "https://github.com/clustermesh/clustermesh"}}
	}
	return []Spec{
		spec(deploy.APIServerRepository, "clustermesh-apiserver", NonRoot),
		spec(deploy.AgentRepository, "clustermesh-agent", ""),
		spec(EchoRepository, "echo", NonRoot),
		spec(ProbeRepository, "probe", NonRoot),
	}
}

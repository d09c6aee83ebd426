# clustermesh build entry points. Every target works on a fresh Debian 12
# machine once .ci/run has installed the toolchain.

# sudo resets PATH; find Go and go-installed tools (staticcheck) anyway.
export PATH := $(PATH):/usr/local/go/bin:$(shell go env GOPATH 2>/dev/null || echo $(HOME)/go)/bin:$(HOME)/go/bin

GO        ?= go
BIN       := bin
HACK_BIN  := hack/bin
PKGS      := ./...
# GOBGP_PATCHES are the packages of our GoBGP fork (third_party/gobgp)
# whose tests cover the patches (PATCHES.md there), run by "make test".
GOBGP_PATCHES := github.com/osrg/gobgp/v3/pkg/server github.com/osrg/gobgp/v3/internal/pkg/table
# The CoreDNS plugin is a module of its own (outside ./...); test and lint
# cover it too. coredns/e2e (in ./...) runs it inside CoreDNS.
COREDNS_PLUGIN := coredns/multicluster
# Benchmarks are long and noisy on shared machines; count=1 by default.
BENCH     ?= .
BENCHTIME ?= 1x

.PHONY: all build images test deps lint generate generate-check bench tools demo clean-drills clean kind-image kind-up kind-down kind-drills

all: build

# VERSION names the build (`--version` of every binary); the default is
# derived from git.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    := $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X github.com/clustermesh/clustermesh/internal/version.Version=$(VERSION) -X github.com/clustermesh/clustermesh/internal/version.Commit=$(COMMIT)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# images writes one docker archive per image into bin/images
# (clustermesh-apiserver, clustermesh-agent and the drills' echo and probe,
# tagged $(VERSION), e.g. clustermesh/clustermesh-agent:$(VERSION)), from
# static binaries on an empty base. No Docker and no registry needed; load
# them with `kind load image-archive bin/images/FILE --name CLUSTER` or
# `docker load -i bin/images/FILE`. Same commit, same image digests.
IMAGES_DIR := $(BIN)/images
STATIC_DIR := $(BIN)/static
images:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(STATIC_DIR)/ \
		./cmd/clustermesh-apiserver ./cmd/clustermesh-agent ./kind-tests/cmd/echo ./kind-tests/cmd/probe
	$(GO) run ./internal/image/cmd/images -tag '$(VERSION)' -arch $$($(GO) env GOARCH) -bin $(STATIC_DIR) -out $(IMAGES_DIR)

# test runs everything CI runs: static checks, then every test with the race
# detector. Root-only tests (netns, eBPF, BGP) skip with a message when not
# root; CI is root.
test: deps lint
	$(GO) test -race -count=1 -timeout 40m $(PKGS) $(GOBGP_PATCHES)
	cd $(COREDNS_PLUGIN) && $(GO) test -race -count=1 ./...

# deps installs what the tests need when it is missing (apt packages,
# staticcheck, the Kubernetes control plane in hack/bin); a no-op otherwise.
deps:
	bash hack/install-deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	staticcheck $(PKGS)
	cd $(COREDNS_PLUGIN) && $(GO) vet ./... && staticcheck ./...

generate:
	$(GO) generate ./bpf/...

# generate-check regenerates the eBPF objects and fails if they differ from
# what is committed.
generate-check: generate
	git diff --exit-code -- bpf/

bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -benchmem -timeout 60m $(PKGS)

# tools builds kube-apiserver, kube-controller-manager, kubectl and etcd from
# source into hack/bin (several minutes on first run; cached afterwards).
tools:
	$(MAKE) -C hack

# demo is the main job: two emulated clusters joined with the clustermesh CLI,
# a global service, traffic, a failover and a table of timings. Root only.
demo:
	bash kind-tests/demo.sh

# clean-drills removes what a killed drill or demo run left behind (network
# namespaces, links, cgroups, bpffs pins, processes with the run prefix).
# It also deletes leftover kind clusters (cm*-cN), node image build containers,
# the kind Docker network and a /lib/modules Docker created.
clean-drills:
	$(GO) run ./kind-tests/cmd/cleanup
	bash hack/kind/clusters.sh clean

# Real kind clusters (docs/kind.md; root). kind-image builds the kind node
# image on this machine, no registry needed (about 25 minutes cold on 2
# loaded cores), or restores it from /var/cache/clustermesh in seconds; it
# starts a Docker engine if none runs (hack/kind/docker.sh). kind-up creates
# cm-c1 and cm-c2 (two nodes each, pods 10.1.0.0/16 and 10.2.0.0/16),
# kubeconfigs in $(CLUSTERMESH_KIND_DIR) (default bin/kind); kind-down deletes
# them.
kind-image:
	bash hack/kind/build-node-image.sh

kind-up:
	bash hack/kind/clusters.sh up

kind-down:
	bash hack/kind/clusters.sh down

# kind-drills runs the failover drills on two real kind clusters (root;
# kind-tests/kind/run.sh): the same drill definitions as the emulator's,
# through the real CLI, images and agents. KEEP=1 keeps the clusters.
kind-drills:
	bash kind-tests/kind/run.sh

clean:
	rm -rf $(BIN)

// Package image builds the project's container images without Docker and
// without a registry: one static binary on an empty (scratch) base, written
// as a docker-archive tarball that `docker load` and `kind load
// image-archive` accept. Nothing is pulled, so the build works on machines
// that reach no registry, and every timestamp in the image is fixed, so the
// same binary always gives the same image digest (a rebuild that changed
// nothing does not make kind nodes load a "new" image).
package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/clustermesh/clustermesh/deploy"
)

// BinDir is where the binary lives inside the image.
const BinDir = "/usr/local/bin"

// Epoch is every timestamp in the image (file mtimes, created, history):
// fixed so that identical binaries give identical digests.
var Epoch = time.Unix(0, 0).UTC()

// ErrInvalidSpec is returned for a Spec that cannot make an image.
var ErrInvalidSpec = errors.New("invalid image spec")

// tagPattern is the reference grammar's tag: what `docker tag` accepts.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Spec describes one image.
type Spec struct {
	// Repository is the image name without tag, e.g.
	// "clustermesh/clustermesh-agent".
	Repository string
	// Tag is the build's version (internal/version.Version). "latest" is
	// refused: an image must say which build it holds.
	Tag string
	// Binary is the path of a static binary on disk; the image runs it as
	// its entrypoint, from BinDir under the binary's base name.
	Binary string
	// Arch is the GOARCH the binary was built for ("amd64").
	Arch string
	// User the entrypoint runs as ("65532:65532"); empty means root, which
	// the agent needs for eBPF and routes.
	User string
	// Labels are added to the image config beside the OCI version label.
	Labels map[string]string
}

// Ref is the image's tagged reference, e.g.
// "clustermesh/clustermesh-agent:v0.4.0".
func (s Spec) Ref() string { return s.Repository + ":" + s.Tag }

// ArchiveName is the file name Write gives the image's archive:
// "clustermesh-agent-v0.4.0.tar" for "clustermesh/clustermesh-agent".
func (s Spec) ArchiveName() string { return deploy.ArchiveFile(s.Ref()) }

func (s Spec) validate() (name.Tag, error) {
	switch {
	case s.Tag == "latest":
		return name.Tag{}, fmt.Errorf("%w: %s: tag latest says nothing about the build; tag with the version", ErrInvalidSpec, s.Repository)
	case !tagPattern.MatchString(s.Tag):
		return name.Tag{}, fmt.Errorf("%w: %s: tag %q is not a valid image tag", ErrInvalidSpec, s.Repository, s.Tag)
	case s.Binary == "":
		return name.Tag{}, fmt.Errorf("%w: %s: no binary", ErrInvalidSpec, s.Repository)
	case s.Arch == "":
		return name.Tag{}, fmt.Errorf("%w: %s: no architecture", ErrInvalidSpec, s.Repository)
	}
	ref, err := name.NewTag(s.Ref())
	if err != nil {
		return name.Tag{}, fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	return ref, nil
}

// Build makes the image in memory: one layer holding the binary (and an
// empty /tmp, which Go's os.TempDir names), a config whose entrypoint is the
// binary.
func Build(s Spec) (v1.Image, error) {
	if _, err := s.validate(); err != nil {
		return nil, err
	}
	layerTar, err := layerTar(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref(), err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Ref(), err)
	}
	entry := path.Join(BinDir, filepath.Base(s.Binary))
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: Epoch},
			CreatedBy: "make images: " + entry,
			Comment:   "static binary on an empty base",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref(), err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", s.Ref(), err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = s.Arch, "linux"
	cfg.Created = v1.Time{Time: Epoch}
	labels := map[string]string{"org.opencontainers.image.version": s.Tag}
	for k, v := range s.Labels {
		labels[k] = v
	}
	cfg.Config = v1.Config{
		Entrypoint: []string{entry},
		Env:        []string{"PATH=" + BinDir},
		User:       s.User,
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", s.Ref(), err)
	}
	return img, nil
}

// layerTar is the uncompressed layer: the directories down to BinDir, /tmp
// and the binary, owned by root, every mtime Epoch.
func layerTar(binary string) ([]byte, error) {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: Epoch, Format: tar.FormatPAX})
	}
	for _, d := range []string{"tmp/", "usr/", "usr/local/", "usr/local/bin/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := dir(d, mode); err != nil {
			return nil, err
		}
	}
	name := path.Join(BinDir, filepath.Base(binary))[1:]
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(bin)), ModTime: Epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write builds the image of s and writes it as a docker archive named
// s.ArchiveName() in dir, replacing the file atomically. It returns the
// archive's path and the image's digest.
func Write(dir string, s Spec) (string, v1.Hash, error) {
	ref, err := s.validate()
	if err != nil {
		return "", v1.Hash{}, err
	}
	img, err := Build(s)
	if err != nil {
		return "", v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", v1.Hash{}, fmt.Errorf("image %s: digest: %w", s.Ref(), err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", v1.Hash{}, fmt.Errorf("image %s: %w", s.Ref(), err)
	}
	out := filepath.Join(dir, s.ArchiveName())
	tmp, err := os.CreateTemp(dir, "."+s.ArchiveName()+".*")
	if err != nil {
		return "", v1.Hash{}, fmt.Errorf("image %s: %w", s.Ref(), err)
	}
	defer os.Remove(tmp.Name())
	if err := tarball.Write(ref, img, tmp); err != nil {
		tmp.Close()
		return "", v1.Hash{}, fmt.Errorf("image %s: write %s: %w", s.Ref(), out, err)
	}
	if err := tmp.Close(); err != nil {
		return "", v1.Hash{}, fmt.Errorf("image %s: write %s: %w", s.Ref(), out, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", v1.Hash{}, fmt.Errorf("image %s: %w", s.Ref(), err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", v1.Hash{}, fmt.Errorf("image %s: %w", s.Ref(), err)
	}
	return out, digest, nil
}

package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/version"
)

// fakeBinary writes content as an executable named name in a new directory.
func fakeBinary(t *testing.T, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, content, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadArchive reads the archive back the way docker load does: by the tag
// in its manifest.json.
func loadArchive(t *testing.T, path, ref string) v1.Image {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("load %s as %s: %v", path, ref, err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("%s: invalid image: %v", ref, err)
	}
	return img
}

// layerFiles returns every entry of the image's only layer, by name.
func layerFiles(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, b
	}
}

func TestWriteLoadsBack(t *testing.T) {
	content := []byte("\x7fELF not really, but bytes to find again")
	for _, tc := range []struct {
		name string
		user string
	}{
		{"clustermesh-agent", ""},
		{"clustermesh-apiserver", NonRoot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Spec{Repository: "clustermesh/" + tc.name, Tag: "v1.2.3-4-gabcdef", Binary: fakeBinary(t, tc.name, content), Arch: "arm64", User: tc.user}
			out := t.TempDir()
			path, digest, err := Write(out, s)
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(out, tc.name+"-v1.2.3-4-gabcdef.tar"); path != want {
				t.Errorf("archive %s, want %s", path, want)
			}
			m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
			if err != nil {
				t.Fatal(err)
			}
			if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{s.Ref()}) {
				t.Fatalf("manifest.json %+v, want one image tagged %s", m, s.Ref())
			}
			img := loadArchive(t, path, s.Ref())
			if d, err := img.Digest(); err != nil || d != digest {
				t.Errorf("loaded digest %v (%v), Write said %v", d, err, digest)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			entry := "/usr/local/bin/" + tc.name
			if !slices.Equal(cfg.Config.Entrypoint, []string{entry}) || cfg.Config.User != tc.user || cfg.Architecture != "arm64" || cfg.OS != "linux" {
				t.Errorf("config: entrypoint %q user %q platform %s/%s; want [%s] %q linux/arm64", cfg.Config.Entrypoint, cfg.Config.User, cfg.OS, cfg.Architecture, entry, tc.user)
			}
			if got := cfg.Config.Labels["org.opencontainers.image.version"]; got != s.Tag {
				t.Errorf("version label %q, want %q", got, s.Tag)
			}
			hdrs, data := layerFiles(t, img)
			bin := strings.TrimPrefix(entry, "/")
			if h := hdrs[bin]; h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 || !bytes.Equal(data[bin], content) {
				t.Fatalf("layer entry %s: %+v; want the binary, mode 0755", bin, h)
			}
			if h := hdrs["tmp/"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
				t.Errorf("layer lacks a /tmp of mode 1777: %+v", h)
			}
			for n, h := range hdrs {
				if !h.ModTime.Equal(Epoch) || h.Uid != 0 || h.Gid != 0 {
					t.Errorf("layer entry %s: mtime %v owner %d:%d; want %v, root", n, h.ModTime, h.Uid, h.Gid, Epoch)
				}
			}
			if left, _ := filepath.Glob(filepath.Join(out, ".*")); len(left) != 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

// TestDeterministic: the same binary, copied elsewhere with another mtime
// and built at another time, gives the same digest and the same archive
// bytes; one byte changed gives another digest.
func TestDeterministic(t *testing.T) {
	content := bytes.Repeat([]byte("clustermesh"), 10000)
	build := func(content []byte, mtime time.Time) (v1.Hash, [32]byte) {
		bin := fakeBinary(t, "clustermesh-agent", content)
		if err := os.Chtimes(bin, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		path, digest, err := Write(t.TempDir(), Spec{Repository: deploy.AgentRepository, Tag: "v1", Binary: bin, Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return digest, sha256.Sum256(b)
	}
	d1, f1 := build(content, time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC))
	d2, f2 := build(content, time.Date(2026, 6, 7, 8, 9, 10, 0, time.UTC))
	if d1 != d2 || f1 != f2 {
		t.Errorf("same binary: digests %v and %v, archive sha256 %x and %x", d1, d2, f1, f2)
	}
	changed := slices.Clone(content)
	changed[len(changed)/2] ^= 1
	if d3, _ := build(changed, time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)); d3 == d1 {
		t.Errorf("a changed binary kept digest %v", d1)
	}
}

func TestSpecRejected(t *testing.T) {
	bin := fakeBinary(t, "echo", []byte("x"))
	for _, tc := range []struct {
		name string
		s    Spec
	}{
		{"latest", Spec{Repository: EchoRepository, Tag: "latest", Binary: bin, Arch: "amd64"}},
		{"empty tag", Spec{Repository: EchoRepository, Binary: bin, Arch: "amd64"}},
		{"tag with a slash", Spec{Repository: EchoRepository, Tag: "feature/x", Binary: bin, Arch: "amd64"}},
		{"upper-case repository", Spec{Repository: "ClusterMesh/echo", Tag: "v1", Binary: bin, Arch: "amd64"}},
		{"no binary", Spec{Repository: EchoRepository, Tag: "v1", Arch: "amd64"}},
		{"no arch", Spec{Repository: EchoRepository, Tag: "v1", Binary: bin}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			if _, _, err := Write(out, tc.s); !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("Write: %v, want %v", err, ErrInvalidSpec)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("rejected spec wrote %v", ents)
			}
		})
	}
	if _, _, err := Write(t.TempDir(), Spec{Repository: EchoRepository, Tag: "v1", Binary: bin + ".missing", Arch: "amd64"}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing binary: %v, want %v", err, os.ErrNotExist)
	}
}

// TestReleaseMatchesDeploy: the images make images builds are the ones the
// manifests of the same build name.
func TestReleaseMatchesDeploy(t *testing.T) {
	refs := map[string]Spec{}
	for _, s := range Release("bin/static", version.Version, "amd64") {
		refs[s.Ref()] = s
	}
	for _, want := range []string{deploy.APIServerImage(), deploy.AgentImage(), EchoRepository + ":" + version.Version, ProbeRepository + ":" + version.Version} {
		if _, ok := refs[want]; !ok {
			t.Errorf("Release lacks %s (has %v)", want, refs)
		}
	}
	if s := refs[deploy.AgentImage()]; s.User != "" || filepath.Base(s.Binary) != "clustermesh-agent" {
		t.Errorf("agent image: user %q binary %s; want root, clustermesh-agent", s.User, s.Binary)
	}
	if s := refs[deploy.APIServerImage()]; s.User != NonRoot {
		t.Errorf("apiserver image user %q, want %s", s.User, NonRoot)
	}
}

// TestStaticBinaryRuns builds the echo command as make images does (static,
// version stamped), packs it, and runs the binary taken back out of the
// loaded archive: what a kubelet would start, with nothing from the host.
func TestStaticBinaryRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "echo")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X github.com/clustermesh/clustermesh/internal/version.Version=v0.0.0-test", "-o", bin, "github.com/clustermesh/clustermesh/kind-tests/cmd/echo")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	s := Spec{Repository: EchoRepository, Tag: "v0.0.0-test", Binary: bin, Arch: "amd64", User: NonRoot}
	path, _, err := Write(filepath.Join(dir, "images"), s)
	if err != nil {
		t.Fatal(err)
	}
	_, data := layerFiles(t, loadArchive(t, path, s.Ref()))
	extracted := filepath.Join(dir, "from-image")
	if err := os.WriteFile(extracted, data["usr/local/bin/echo"], 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(extracted, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "echo v0.0.0-test (commit ") {
		t.Fatalf("%s --version: %q (%v); want the stamped version", extracted, out, err)
	}
}

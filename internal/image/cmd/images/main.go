// Command images writes the release images (internal/image.Release) as
// docker archives, one per image, from static binaries already built:
//
//	go run ./internal/image/cmd/images -tag v0.4.0 -bin bin/static -out bin/images
//
// `make images` builds the binaries and runs it. Load the archives with
// `docker load -i FILE` or `kind load image-archive FILE --name CLUSTER`.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"github.com/clustermesh/clustermesh/internal/image"
)

func main() {
	tag := flag.String("tag", "", "image tag: the version the binaries were stamped with")
	bin := flag.String("bin", "bin/static", "directory of the static binaries")
	out := flag.String("out", "bin/images", "directory the archives are written to")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH the binaries were built for")
	flag.Parse()
	if *tag == "" {
		fmt.Fprintln(os.Stderr, "images: -tag is required (make images passes the version)")
		os.Exit(2)
	}
	for _, s := range image.Release(*bin, *tag, *arch) {
		path, digest, err := image.Write(*out, s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "images:", err)
			os.Exit(1)
		}
		st, err := os.Stat(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "images:", err)
			os.Exit(1)
		}
		fmt.Printf("%-44s %s  %5.1f MB  %s\n", s.Ref(), digest.Hex[:12], float64(st.Size())/1e6, path)
	}
}

// Command cleanup removes what kind-tests runs left behind (after a crash or
// a kill -9 of the harness): processes, network namespaces, links, cgroups,
// bpffs pins and state directories whose names start with a run prefix
// ("cmk" + 4 hex digits). Run it as root:
//
//	go run ./kind-tests/cmd/cleanup            # every leftover run
//	go run ./kind-tests/cmd/cleanup -prefix cmk1a2b
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

func main() {
	prefix := flag.String("prefix", "", "clean only this run (default: every run)")
	flag.Parse()
	done, err := emulator.Clean(context.Background(), *prefix)
	for _, d := range done {
		fmt.Println(d)
	}
	if len(done) == 0 && err == nil {
		fmt.Println("nothing to clean")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
		os.Exit(1)
	}
}

// Package version says which build of clustermesh is running: every binary
// answers `--version` and `version` with it, and images are tagged with it.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is the release version, set at build time:
//
//	go build -ldflags "-X github.com/clustermesh/clustermesh/internal/version.Version=v0.4.0"
//
// A build without it reports "dev".
var Version = "dev"

// Commit is the VCS commit, set at build time like Version (make build does)
// for builds where Go does not stamp it (-buildvcs=false, a copied tree).
var Commit = ""

// Info describes the running build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
}

// Get reads the build's version and the VCS commit Go stamped into it.
func Get() Info {
	i := Info{Version: Version, Commit: "unknown", GoVersion: runtime.Version()}
	if Commit != "" {
		i.Commit = Commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.modified":
				i.Modified = s.Value == "true"
			}
		}
	}
	return i
}

// String is the one-line form: "v0.4.0 (commit 1a2b3c4d5e6f, go1.24.1)".
func (i Info) String() string {
	commit := i.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if i.Modified {
		commit += "-dirty"
	}
	return fmt.Sprintf("%s (commit %s, %s)", i.Version, commit, i.GoVersion)
}

// AddTo gives a binary's root command a --version flag and a version
// subcommand, both printing the build.
func AddTo(root *cobra.Command) {
	root.Version = Get().String()
	root.SetVersionTemplate(root.Name() + " {{.Version}}\n")
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version of this build",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", root.Name(), Get())
			return err
		},
	})
}

// Requested says whether args (os.Args[1:]) ask a command built on the
// standard flag package for its version: a first argument "version", or
// -version / --version anywhere before "--". Such commands (the drills'
// echo and probe) then print Get and exit, as cobra commands do with AddTo.
func Requested(args []string) bool {
	if len(args) > 0 && args[0] == "version" {
		return true
	}
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-version", "--version":
			return true
		}
	}
	return false
}

package version

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestAddTo(t *testing.T) {
	old := Version
	Version = "v9.8.7"
	defer func() { Version = old }()
	for _, args := range [][]string{{"--version"}, {"version"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			root := &cobra.Command{Use: "tool", RunE: func(*cobra.Command, []string) error { t.Error("root ran"); return nil }}
			AddTo(root)
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(args)
			if err := root.Execute(); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"tool v9.8.7 (commit ", runtime.Version()} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output %q lacks %q", out.String(), want)
				}
			}
		})
	}
}

func TestStringShortensCommit(t *testing.T) {
	got := Info{Version: "v1", Commit: "0123456789abcdef0123", Modified: true, GoVersion: "go1.x"}.String()
	if got != "v1 (commit 0123456789ab-dirty, go1.x)" {
		t.Errorf("String() = %q", got)
	}
}

func TestRequested(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"version"}, true},
		{[]string{"--version"}, true},
		{[]string{"-listen", ":80", "-version"}, true},
		{[]string{"-target", "version"}, false},
		{[]string{"--", "--version"}, false},
		{[]string{"-listen", ":80"}, false},
	} {
		if got := Requested(tc.args); got != tc.want {
			t.Errorf("Requested(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

package flagdir

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type flags struct {
	fs     *pflag.FlagSet
	routes string
	health bool
	poll   time.Duration
}

func newFlags() *flags {
	f := &flags{fs: pflag.NewFlagSet("t", pflag.ContinueOnError)}
	f.fs.StringVar(&f.routes, "routes", "none", "")
	f.fs.BoolVar(&f.health, "health", false, "")
	f.fs.DurationVar(&f.poll, "poll", time.Second, "")
	return f
}

// writeDir lays files out as the kubelet mounts a ConfigMap: the values in
// a timestamped directory behind "..data", each key a link through it.
func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_12_03_16_00_00.1")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(data, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestApply(t *testing.T) {
	for _, tc := range []struct {
		name        string
		files       map[string]string
		args        []string
		wantApplied []string
		wantRoutes  string
		wantHealth  bool
		wantPoll    time.Duration
		wantErr     error
		errHas      string
	}{
		{name: "empty", wantRoutes: "none", wantPoll: time.Second},
		{
			name:        "values set, white space trimmed",
			files:       map[string]string{"routes": "static-all\n", "health": " true ", "poll": "250ms"},
			wantApplied: []string{"health", "poll", "routes"},
			wantRoutes:  "static-all", wantHealth: true, wantPoll: 250 * time.Millisecond,
		},
		{
			name:        "command line wins",
			files:       map[string]string{"routes": "static-all", "health": "true"},
			args:        []string{"--routes=static"},
			wantApplied: []string{"health"},
			wantRoutes:  "static", wantHealth: true, wantPoll: time.Second,
		},
		{
			name:    "unknown key refused by name",
			files:   map[string]string{"rotues": "static"},
			wantErr: ErrUnknownFlag, errHas: "key rotues",
		},
		{
			name:   "bad value refused by name",
			files:  map[string]string{"poll": "soon"},
			errHas: "key poll",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFlags()
			if err := f.fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			applied, err := Apply(f.fs, writeDir(t, tc.files))
			if tc.wantErr != nil || tc.errHas != "" {
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want %v naming %q", err, tc.wantErr, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(applied, tc.wantApplied) {
				t.Errorf("applied %v, want %v", applied, tc.wantApplied)
			}
			if f.routes != tc.wantRoutes || f.health != tc.wantHealth || f.poll != tc.wantPoll {
				t.Errorf("routes=%q health=%v poll=%v, want %q %v %v", f.routes, f.health, f.poll, tc.wantRoutes, tc.wantHealth, tc.wantPoll)
			}
		})
	}
}

func TestApplyMissingDir(t *testing.T) {
	if _, err := Apply(newFlags().fs, filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Fatal("missing directory accepted")
	}
	if got, err := Apply(newFlags().fs, ""); err != nil || got != nil {
		t.Fatalf("empty dir name: %v, %v", got, err)
	}
}

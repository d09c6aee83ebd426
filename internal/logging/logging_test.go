package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
		check   func(t *testing.T, out string)
	}{
		{args: nil, check: func(t *testing.T, out string) {
			if !strings.Contains(out, "msg=hello") || strings.Contains(out, "hidden") {
				t.Errorf("default text at info: %q", out)
			}
		}},
		{args: []string{"--log-format=json", "--log-level=debug"}, check: func(t *testing.T, out string) {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 {
				t.Fatalf("want 2 json lines (debug on), got %q", out)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(lines[1]), &m); err != nil || m["msg"] != "hello" || m["node"] != "n1" {
				t.Errorf("json line %q: %v %v", lines[1], m, err)
			}
		}},
		{args: []string{"--log-format=xml"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var f Flags
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			f.Register(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			l, err := f.Logger(&buf)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			l.Debug("hidden")
			l.Info("hello", "node", "n1")
			tt.check(t, buf.String())
		})
	}
}

func TestOrDiscard(t *testing.T) {
	if OrDiscard(nil).Enabled(t.Context(), slog.LevelError) {
		t.Error("nil logger enabled: it would log somewhere")
	}
	l := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	if OrDiscard(l) != l {
		t.Error("a given logger is replaced")
	}
}

package kvstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.crt", "c.crt", "c.key"} {
		write(t, filepath.Join(dir, f), []byte("x"))
	}
	abs := filepath.Join(dir, "ca.crt")
	tests := []struct {
		name    string
		yaml    string
		want    Config
		wantErr string // substring naming the offending field
	}{
		{
			name: "relative paths and timeouts",
			yaml: "endpoints: [\"https://10.1.0.10:2379\"]\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: c.key\ndial-timeout: 3s\nrequest-timeout: 1m\n",
			want: Config{Endpoints: []string{"https://10.1.0.10:2379"}, CAFile: abs, CertFile: filepath.Join(dir, "c.crt"), KeyFile: filepath.Join(dir, "c.key"), DialTimeout: 3 * time.Second, RequestTimeout: time.Minute},
		},
		{
			name: "absolute path, default timeouts",
			yaml: "endpoints: [\"https://a:1\", \"https://b:1\"]\ntrusted-ca-file: " + abs + "\ncert-file: c.crt\nkey-file: c.key\n",
			want: Config{Endpoints: []string{"https://a:1", "https://b:1"}, CAFile: abs, CertFile: filepath.Join(dir, "c.crt"), KeyFile: filepath.Join(dir, "c.key")},
		},
		{name: "no endpoints", yaml: "trusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: c.key\n", wantErr: "endpoints"},
		{name: "missing key file", yaml: "endpoints: [\"https://a:1\"]\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: nope.key\n", wantErr: "key-file"},
		{name: "no ca", yaml: "endpoints: [\"https://a:1\"]\ncert-file: c.crt\nkey-file: c.key\n", wantErr: "trusted-ca-file"},
		{name: "bad duration", yaml: "endpoints: [\"https://a:1\"]\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: c.key\ndial-timeout: 5\n", wantErr: "dial-timeout"},
		{name: "unknown field", yaml: "endpoints: [\"https://a:1\"]\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: c.key\nca-file: x\n", wantErr: "ca-file"},
		{name: "not yaml", yaml: "endpoints: [", wantErr: "c1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "c1")
			write(t, path, []byte(tt.yaml))
			got, err := LoadConfig(path)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("no error, want one naming %q", tt.wantErr)
				}
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("err = %v, want ErrConfig naming %s and %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got.Endpoints, ",") != strings.Join(tt.want.Endpoints, ",") || got.CAFile != tt.want.CAFile || got.CertFile != tt.want.CertFile ||
				got.KeyFile != tt.want.KeyFile || got.DialTimeout != tt.want.DialTimeout || got.RequestTimeout != tt.want.RequestTimeout {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing")); !errors.Is(err, ErrConfig) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v", err)
	}
}

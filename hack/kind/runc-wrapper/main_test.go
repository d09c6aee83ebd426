package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestSubcommandAndFlags(t *testing.T) {
	tests := []struct {
		args        []string
		cmd, bundle string
		process     string
	}{
		{[]string{"--root", "/run/runc", "--log", "/x.log", "--log-format", "json", "create", "--bundle", "/b", "id"}, "create", "/b", ""},
		{[]string{"--systemd-cgroup", "run", "-b=/b2", "id"}, "run", "/b2", ""},
		{[]string{"--root=/r", "exec", "--process", "/tmp/p.json", "--detach", "id"}, "exec", "", "/tmp/p.json"},
		{[]string{"state", "id"}, "state", "", ""},
		{[]string{"--version"}, "", "", ""},
	}
	for _, tt := range tests {
		cmd, rest := subcommand(tt.args)
		if cmd != tt.cmd {
			t.Errorf("%q: subcommand %q, want %q", tt.args, cmd, tt.cmd)
		}
		if b := flagValue(rest, "--bundle", "-b"); b != tt.bundle {
			t.Errorf("%q: bundle %q, want %q", tt.args, b, tt.bundle)
		}
		if p := flagValue(rest, "--process", "-p"); p != tt.process {
			t.Errorf("%q: process %q, want %q", tt.args, p, tt.process)
		}
	}
}

func TestRewriteBundle(t *testing.T) {
	dir := t.TempDir()
	spec := `{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"capabilities":{
		"bounding":["CAP_CHOWN","CAP_SYS_RESOURCE","CAP_SYS_ADMIN"],
		"effective":["CAP_SYS_RESOURCE"],"permitted":["CAP_SYS_RESOURCE","CAP_NET_ADMIN"]},
		"rlimits":[{"type":"RLIMIT_NOFILE","hard":1048576,"soft":1048576}]},"x-unknown":{"keep":true}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rewrite([]string{"create", "--bundle", dir, "id"}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Process struct {
			Capabilities map[string][]string     `json:"capabilities"`
			Rlimits      []struct{ Hard uint64 } `json:"rlimits"`
		} `json:"process"`
		Unknown map[string]bool `json:"x-unknown"`
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"bounding":  {"CAP_CHOWN", "CAP_SYS_ADMIN"},
		"effective": {},
		"permitted": {"CAP_NET_ADMIN"},
	}
	for set, caps := range want {
		if !slices.Equal(got.Process.Capabilities[set], caps) {
			t.Errorf("%s = %q, want %q", set, got.Process.Capabilities[set], caps)
		}
	}
	if len(got.Process.Rlimits) != 1 || got.Process.Rlimits[0].Hard != 1048576 || !got.Unknown["keep"] {
		t.Errorf("other fields changed: %s", data)
	}
}

func TestRewriteExecProcess(t *testing.T) {
	p := filepath.Join(t.TempDir(), "process.json")
	if err := os.WriteFile(p, []byte(`{"args":["sh"],"capabilities":{"bounding":["CAP_SYS_RESOURCE","CAP_KILL"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rewrite([]string{"--root", "/r", "exec", "-p", p, "id"}); err != nil {
		t.Fatal(err)
	}
	var got struct{ Capabilities map[string][]string }
	data, _ := os.ReadFile(p)
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Capabilities["bounding"], []string{"CAP_KILL"}) {
		t.Errorf("bounding = %q", got.Capabilities["bounding"])
	}
}

func TestUnchangedSpecNotRewritten(t *testing.T) {
	dir := t.TempDir()
	spec := []byte(`{"process":{"capabilities":{"bounding":["CAP_KILL"]}},  "keep":"format"}`)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), spec, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rewrite([]string{"run", "--bundle=" + dir, "id"}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if string(data) != string(spec) {
		t.Errorf("spec rewritten: %s", data)
	}
}

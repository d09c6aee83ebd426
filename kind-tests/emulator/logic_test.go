package emulator

import (
	"testing"
)

func TestRemapPath(t *testing.T) {
	mounts := map[string]string{
		"/var/lib/clustermesh/clusters": "/tmp/run/pod/clusters",
		"/var/lib/clustermesh":          "/tmp/run/pod/lib",
		"/sys/fs/bpf":                   "/sys/fs/bpf/cmk0000/c1/n1",
	}
	for _, tc := range []struct{ in, want string }{
		{"--clusters-dir=/var/lib/clustermesh/clusters", "--clusters-dir=/tmp/run/pod/clusters"},
		{"/var/lib/clustermesh/clusters/c1.crt", "/tmp/run/pod/clusters/c1.crt"},
		{"--etcd-ca=/var/lib/clustermesh/server/ca.crt", "--etcd-ca=/tmp/run/pod/lib/server/ca.crt"},
		{"--bpf-pin-dir=/sys/fs/bpf", "--bpf-pin-dir=/sys/fs/bpf/cmk0000/c1/n1"},
		// A longer name sharing a prefix is not under the mount point.
		{"/var/lib/clustermesh-other/x", "/var/lib/clustermesh-other/x"},
		{"--cluster-name=c1", "--cluster-name=c1"},
	} {
		if got := remapPath(tc.in, mounts); got != tc.want {
			t.Errorf("remapPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestExpandEnv(t *testing.T) {
	env := []string{"HOST_IP=192.0.2.1", "EMPTY="}
	for _, tc := range []struct{ in, want string }{
		{"--bgp-reflector-address=$(HOST_IP):1790", "--bgp-reflector-address=192.0.2.1:1790"},
		{"$(EMPTY)x", "x"},
		{"$(UNDEFINED)", "$(UNDEFINED)"},
		{"$$(HOST_IP)", "$(HOST_IP)"},
		{"a$", "a$"},
		{"$(HOST_IP", "$(HOST_IP"},
		{"plain", "plain"},
	} {
		if got := expandEnv([]string{tc.in}, env)[0]; got != tc.want {
			t.Errorf("expandEnv(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

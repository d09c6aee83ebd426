package deploy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func TestRenderAll(t *testing.T) {
	v := DefaultValues()
	v.ClusterName = "c1"
	v.ClusterID = 7
	v.Endpoint = "https://10.0.0.1:2379"
	objs, err := RenderAll(v)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		if ns := o.GetNamespace(); o.GetKind() != "Namespace" && o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" && ns != Namespace {
			t.Errorf("%s %s: namespace %q, want %q", o.GetKind(), o.GetName(), ns, Namespace)
		}
	}
	for kind, n := range map[string]int{"Namespace": 1, "ServiceAccount": 2, "ClusterRole": 1, "ClusterRoleBinding": 1, "Service": 1, "ConfigMap": 1, "Deployment": 1, "DaemonSet": 1} {
		if kinds[kind] != n {
			t.Errorf("%d %s objects, want %d", kinds[kind], kind, n)
		}
	}
	for _, o := range objs {
		if o.GetKind() != "ConfigMap" {
			continue
		}
		data := o.Object["data"].(map[string]any)
		if data["cluster-id"] != "7" || data["cluster-name"] != "c1" || data["endpoint"] != v.Endpoint {
			t.Errorf("config data %v", data)
		}
	}
}

func TestRenderRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Values)
	}{
		{"no name", func(v *Values) { v.ClusterName = "" }},
		{"no id", func(v *Values) { v.ClusterID = 0 }},
		{"bad service type", func(v *Values) { v.ServiceType = "External" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := DefaultValues()
			v.ClusterName, v.ClusterID = "c1", 1
			tc.mod(&v)
			if _, err := RenderAll(v); !errors.Is(err, ErrInvalidValues) {
				t.Fatalf("err = %v, want ErrInvalidValues", err)
			}
		})
	}
}

// TestHostNetworkStore checks that static-all puts the apiserver on the host
// network on its own port, and that the other modes keep it on the pod
// network.
func TestHostNetworkStore(t *testing.T) {
	for _, tc := range []struct {
		routes   string
		hostNet  bool
		wantPort string
	}{
		{"static", false, "2379"},
		{"none", false, "2379"},
		{"static-all", true, "12379"},
	} {
		t.Run(tc.routes, func(t *testing.T) {
			v := DefaultValues()
			v.ClusterName, v.ClusterID, v.Routes = "c1", 1, tc.routes
			if v.HostNetworkStore() {
				v.EtcdPort = HostNetworkEtcdPort
			}
			objs, err := Render(FileDeployment, v)
			if err != nil {
				t.Fatal(err)
			}
			spec := objs[0].Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
			if got, _ := spec["hostNetwork"].(bool); got != tc.hostNet {
				t.Errorf("hostNetwork = %v, want %v", got, tc.hostNet)
			}
			args := fmt.Sprint(spec["containers"].([]any)[0].(map[string]any)["args"])
			if !strings.Contains(args, "https://0.0.0.0:"+tc.wantPort) {
				t.Errorf("args %s: want the store on port %s", args, tc.wantPort)
			}
		})
	}
}

// TestAPIServerRestricted checks the apiserver's pod against the Pod
// Security "restricted" profile's rules (with the pod network; static-all
// puts it on the host network, which only "privileged" admits).
func TestAPIServerRestricted(t *testing.T) {
	v := DefaultValues()
	v.ClusterName, v.ClusterID = "c1", 1
	objs, err := Render(FileDeployment, v)
	if err != nil {
		t.Fatal(err)
	}
	spec := objs[0].Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	pod, _ := spec["securityContext"].(map[string]any)
	ctr := spec["containers"].([]any)[0].(map[string]any)
	csc, _ := ctr["securityContext"].(map[string]any)
	get := func(m map[string]any, path ...string) any {
		var v any = m
		for _, p := range path {
			mm, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = mm[p]
		}
		return v
	}
	for _, tc := range []struct {
		rule string
		ok   bool
	}{
		{"no host network, PID or IPC", spec["hostNetwork"] == nil && spec["hostPID"] == nil && spec["hostIPC"] == nil},
		{"runAsNonRoot", get(pod, "runAsNonRoot") == true || get(csc, "runAsNonRoot") == true},
		{"runAsUser not 0", fmt.Sprint(get(pod, "runAsUser")) != "0" && fmt.Sprint(get(csc, "runAsUser")) != "0"},
		{"seccomp RuntimeDefault", get(pod, "seccompProfile", "type") == "RuntimeDefault" || get(csc, "seccompProfile", "type") == "RuntimeDefault"},
		{"allowPrivilegeEscalation false", get(csc, "allowPrivilegeEscalation") == false},
		{"capabilities drop ALL, add none", fmt.Sprint(get(csc, "capabilities", "drop")) == "[ALL]" && get(csc, "capabilities", "add") == nil},
		{"not privileged", get(csc, "privileged") != true},
		{"no hostPath volume", !strings.Contains(fmt.Sprint(spec["volumes"]), "hostPath")},
		{"no hostPort", !strings.Contains(fmt.Sprint(ctr["ports"]), "hostPort")},
	} {
		if !tc.ok {
			t.Errorf("restricted profile: %s violated", tc.rule)
		}
	}
}

// TestRenderCleanup: the node cleanup DaemonSet is not applied by enable,
// runs the cleanup with the agent's image, mounts and capabilities (never
// SYS_RESOURCE), is Ready only by its check, and every object is labelled
// for disable to find and delete.
func TestRenderCleanup(t *testing.T) {
	if slices.Contains(Files, FileCleanup) {
		t.Fatalf("%s is among the files enable applies", FileCleanup)
	}
	v := DefaultValues()
	v.ClusterName, v.ClusterID, v.AgentImage = "c1", 1, "example/agent:v9"
	objs, err := Render(FileCleanup, v)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
		if o.GetLabels()["app.kubernetes.io/part-of"] != "clustermesh" || o.GetNamespace() != Namespace {
			t.Errorf("%s %s: labels %v namespace %q", o.GetKind(), o.GetName(), o.GetLabels(), o.GetNamespace())
		}
	}
	if !slices.Equal(kinds, []string{"ServiceAccount", "DaemonSet"}) {
		t.Fatalf("kinds %v", kinds)
	}
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[1].Object, &ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	if c.Image != v.AgentImage || !slices.Equal(c.Args[:1], []string{"cleanup"}) || !slices.Contains(c.Args, "--hold") || !spec.HostNetwork {
		t.Errorf("container %s %v, host network %v", c.Image, c.Args, spec.HostNetwork)
	}
	if p := c.ReadinessProbe; p == nil || p.Exec == nil || !slices.Contains(p.Exec.Command, "--check") {
		t.Errorf("readiness probe %+v: want cleanup --check", p)
	}
	caps := c.SecurityContext.Capabilities.Add
	if !slices.Contains(caps, "SYS_ADMIN") || !slices.Contains(caps, "NET_ADMIN") || slices.Contains(caps, "SYS_RESOURCE") {
		t.Errorf("capabilities %v", caps)
	}
	mounts := map[string]bool{}
	for _, vol := range spec.Volumes {
		if vol.HostPath != nil {
			mounts[vol.HostPath.Path] = true
		}
	}
	if !mounts["/sys/fs/bpf"] || !mounts["/sys/fs/cgroup"] {
		t.Errorf("host paths %v, want the bpffs and the cgroup", mounts)
	}
}

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
	for kind, n := range map[string]int{"Namespace": 1, "ServiceAccount": 2, "ClusterRole": 1, "ClusterRoleBinding": 1, "Service": 1, "ConfigMap": 3, "StatefulSet": 1, "DaemonSet": 1, "PersistentVolume": 0} {
		if kinds[kind] != n {
			t.Errorf("%d %s objects, want %d", kinds[kind], kind, n)
		}
	}
	for _, o := range objs {
		if o.GetKind() != "ConfigMap" || o.GetName() != "clustermesh-config" {
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
		{"unknown routes", func(v *Values) { v.Routes = "ospf" }},
		{"reflector on the speaker's port", func(v *Values) { v.Routes, v.BGPReflectorPort = RoutesBGP, 179 }},
		{"reserved ASN", func(v *Values) { v.Routes, v.BGPASN = RoutesBGP, 23456 }},
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

// TestHostNetworkStore checks that static-all and bgp put the apiserver on
// the host network on its own port (bgp with the route reflector on the
// node's address), and that the other modes keep it on the pod network.
func TestHostNetworkStore(t *testing.T) {
	for _, tc := range []struct {
		routes   string
		hostNet  bool
		wantPort string
	}{
		{"static", false, "2379"},
		{"none", false, "2379"},
		{"static-all", true, "12379"},
		{"bgp", true, "12379"},
	} {
		t.Run(tc.routes, func(t *testing.T) {
			v := DefaultValues()
			v.ClusterName, v.ClusterID, v.Routes = "c1", 1, tc.routes
			if v.HostNetworkStore() {
				v.EtcdPort = HostNetworkEtcdPort
			}
			objs, err := Render(FileStatefulSet, v)
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
			wantRR := tc.routes == "bgp"
			if got := strings.Contains(args, "--bgp-reflector-address=$(HOST_IP):1790") && strings.Contains(args, "--bgp-asn=64513"); got != wantRR {
				t.Errorf("args %s: route reflector flags present = %v, want %v", args, got, wantRR)
			}
		})
	}
}

// TestAPIServerRestricted checks the apiserver's pod against the Pod
// Security "restricted" profile's rules (with the pod network, routes
// static; static-all and bgp put it on the host network, which only
// "privileged" admits).
func TestAPIServerRestricted(t *testing.T) {
	for _, storage := range []string{StorageClaim, StorageNodeLocal, StorageEphemeral} {
		t.Run(storage, func(t *testing.T) {
			v := DefaultValues()
			v.ClusterName, v.ClusterID, v.Storage, v.StoreNode, v.Routes = "c1", 1, storage, "n1", RoutesStatic
			checkRestricted(t, v)
		})
	}
}

func checkRestricted(t *testing.T, v Values) {
	t.Helper()
	objs, err := Render(FileStatefulSet, v)
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

// podSpec returns the pod template's spec of a rendered workload.
func podSpec(o map[string]any) map[string]any {
	return o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
}

// TestStorage checks each store storage mode: what the StatefulSet claims,
// the node-local PersistentVolume bound to that claim and pinned to its node,
// and the agent mount that creates the volume's directory.
func TestStorage(t *testing.T) {
	for _, tc := range []struct {
		storage, class, node string
		wantClaim            bool
		wantClass            any // the claim's storageClassName; nil: unset
		wantPV               bool
		wantErr              bool
	}{
		{storage: StorageClaim, wantClaim: true},
		{storage: StorageClaim, class: "fast", wantClaim: true, wantClass: "fast"},
		{storage: StorageNodeLocal, node: "n1", wantClaim: true, wantClass: "", wantPV: true},
		{storage: StorageNodeLocal, wantErr: true},
		{storage: StorageEphemeral},
		{storage: "tmpfs", wantErr: true},
	} {
		t.Run(tc.storage+"/"+tc.class+tc.node, func(t *testing.T) {
			v := DefaultValues()
			v.ClusterName, v.ClusterID = "c1", 1
			v.Storage, v.StorageClass, v.StoreNode = tc.storage, tc.class, tc.node
			objs, err := RenderAll(v)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidValues) {
					t.Fatalf("err = %v, want ErrInvalidValues", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			byKind := map[string]map[string]any{}
			for _, o := range objs {
				byKind[o.GetKind()] = o.Object
			}
			sts := byKind["StatefulSet"]
			templates, _ := sts["spec"].(map[string]any)["volumeClaimTemplates"].([]any)
			if got := len(templates) == 1; got != tc.wantClaim {
				t.Fatalf("claim templates %v, want a claim: %v", templates, tc.wantClaim)
			}
			vols := fmt.Sprint(podSpec(sts)["volumes"])
			if tc.wantClaim == strings.Contains(vols, "emptyDir") {
				t.Errorf("volumes %s: emptyDir present = %v with a claim = %v", vols, !tc.wantClaim, tc.wantClaim)
			}
			if tc.wantClaim {
				spec := templates[0].(map[string]any)["spec"].(map[string]any)
				if class, ok := spec["storageClassName"]; fmt.Sprint(class) != fmt.Sprint(tc.wantClass) || ok != (tc.wantClass != nil) {
					t.Errorf("claim storageClassName %v (set %v), want %v", class, ok, tc.wantClass)
				}
			}
			pv, ds := byKind["PersistentVolume"], fmt.Sprint(podSpec(byKind["DaemonSet"])["volumes"])
			if (pv != nil) != tc.wantPV || strings.Contains(ds, v.StoreHostPath()) != tc.wantPV {
				t.Fatalf("PersistentVolume %v, agent volumes %s: want node-local volume: %v", pv, ds, tc.wantPV)
			}
			if !tc.wantPV {
				return
			}
			spec := pv["spec"].(map[string]any)
			if got := fmt.Sprint(spec["nodeAffinity"]); !strings.Contains(got, "[n1]") {
				t.Errorf("PV node affinity %s, want node n1", got)
			}
			ref := spec["claimRef"].(map[string]any)
			if ref["name"] != "data-clustermesh-apiserver-0" || ref["namespace"] != Namespace {
				t.Errorf("PV claimRef %v: not the StatefulSet's claim", ref)
			}
			if got := templates[0].(map[string]any)["spec"].(map[string]any)["volumeName"]; got != v.StoreVolumeName() || pv["metadata"].(map[string]any)["name"] != got {
				t.Errorf("claim volumeName %v, PV %v", got, pv["metadata"])
			}
			if fmt.Sprint(spec["local"]) != "map[path:"+v.StoreHostPath()+"]" {
				t.Errorf("PV local %v, want path %s", spec["local"], v.StoreHostPath())
			}
		})
	}
}

// TestSettings checks that operator settings reach the daemons through
// their ConfigMaps (not hard-coded arguments a re-run of enable would
// revert), and that the pod templates carry the settings' hashes.
func TestSettings(t *testing.T) {
	v := DefaultValues()
	v.ClusterName, v.ClusterID, v.Routes = "c1", 1, "static-all"
	v.AgentConfigHash, v.APIServerConfigHash = "a1b2", "c3d4"
	objs, err := RenderAll(v)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]map[string]any{}
	for _, o := range objs {
		byName[o.GetKind()+"/"+o.GetName()] = o.Object
	}
	agentCM := byName["ConfigMap/"+AgentSettings]
	if agentCM == nil || byName["ConfigMap/"+APIServerSettings] == nil {
		t.Fatalf("settings ConfigMaps missing: %v", byName)
	}
	if got := agentCM["data"].(map[string]any)["routes"]; got != "static-all" {
		t.Errorf("agent settings routes = %v, want static-all", got)
	}
	for _, tc := range []struct{ obj, cm, hash string }{
		{"DaemonSet/clustermesh-agent", AgentSettings, "a1b2"},
		{"StatefulSet/clustermesh-apiserver", APIServerSettings, "c3d4"},
	} {
		o := byName[tc.obj]
		meta := o["spec"].(map[string]any)["template"].(map[string]any)["metadata"].(map[string]any)
		if got := meta["annotations"].(map[string]any)["clustermesh.io/config-hash"]; got != tc.hash {
			t.Errorf("%s: config hash %v, want %s", tc.obj, got, tc.hash)
		}
		spec := podSpec(o)
		args := fmt.Sprint(spec["containers"].([]any)[0].(map[string]any)["args"])
		if !strings.Contains(args, "--config-dir=/etc/clustermesh/config") || strings.Contains(args, "--routes") {
			t.Errorf("%s: args %s: want --config-dir and no --routes", tc.obj, args)
		}
		if !strings.Contains(fmt.Sprint(spec["volumes"]), "name:"+tc.cm) {
			t.Errorf("%s: no volume of ConfigMap %s", tc.obj, tc.cm)
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

// TestMCSVersions: every version the code names is served by the CRDs
// shipped in FileMCSCRD, and the written one is their storage version.
func TestMCSVersions(t *testing.T) {
	b, err := manifests.ReadFile(FileMCSCRD)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---") {
		if !strings.Contains(doc, "kind: CustomResourceDefinition") {
			continue
		}
		for _, v := range MCSVersions() {
			if !strings.Contains(doc, "- name: "+v+"\n") {
				t.Errorf("%s: the CRD does not serve version %s:\n%s", FileMCSCRD, v, doc)
			}
		}
		if !strings.Contains(doc, "- name: "+MCSVersion+"\n    served: true\n    storage: true") {
			t.Errorf("%s: %s is not the storage version:\n%s", FileMCSCRD, MCSVersion, doc)
		}
		if !strings.Contains(doc, "group: "+MCSGroup+"\n") {
			t.Errorf("%s: not group %s", FileMCSCRD, MCSGroup)
		}
	}
}

package mesh

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// kubeadmCorefile is the Corefile kubeadm v1.36 writes.
const kubeadmCorefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
`

func TestAddMulticluster(t *testing.T) {
	line := corednsDirective + " " + corednsMarker
	tests := []struct {
		name    string
		in      string
		want    string // "" when unchanged
		wantErr bool
	}{
		{"kubeadm's: before kubernetes", kubeadmCorefile,
			strings.Replace(kubeadmCorefile, "    kubernetes cluster.local", "    "+line+"\n    kubernetes cluster.local", 1), false},
		{"tab indentation kept", ".:53 {\n\terrors\n\tkubernetes cluster.local\n}\n",
			".:53 {\n\terrors\n\t" + line + "\n\tkubernetes cluster.local\n}\n", false},
		{"no kubernetes: at the end of the block", ". {\n    forward . 8.8.8.8\n}\n",
			". {\n    forward . 8.8.8.8\n    " + line + "\n}\n", false},
		{"root block after another", "example.org {\n    kubernetes x\n}\n.:53 {\n    kubernetes cluster.local\n}\n",
			"example.org {\n    kubernetes x\n}\n.:53 {\n    " + line + "\n    kubernetes cluster.local\n}\n", false},
		{"already there (by hand)", ".:53 {\n    multicluster clusterset.local {\n        fallthrough\n    }\n    kubernetes cluster.local\n}\n", "", false},
		{"commented out does not count", ".:53 {\n    # multicluster clusterset.local\n    kubernetes cluster.local\n}\n",
			".:53 {\n    # multicluster clusterset.local\n    " + line + "\n    kubernetes cluster.local\n}\n", false},
		{"no root block", "example.org:53 {\n    forward . 1.1.1.1\n}\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed, err := addMulticluster(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			want := tt.want
			if want == "" {
				want = tt.in
			}
			if changed != (tt.want != "") || got != want {
				t.Fatalf("changed %v, got\n%s\nwant\n%s", changed, got, want)
			}
			if !hasMulticluster(got) {
				t.Errorf("hasMulticluster false after add")
			}
			// Idempotent, and removal restores the input when enable added it.
			if again, changed, _ := addMulticluster(got); changed || again != got {
				t.Errorf("second add changed the Corefile")
			}
			back, removed := removeMulticluster(got)
			if removed != changed || back != tt.in {
				t.Errorf("remove: changed %v, got\n%s\nwant\n%s", removed, back, tt.in)
			}
		})
	}
}

// TestConfigureCoreDNS writes against a real kube-apiserver (no kubelet:
// no CoreDNS pod runs): configure adds the plugin line and the RBAC bound
// to the CoreDNS Deployment's service account; a re-run changes nothing;
// auto, with no CoreDNS pod to confirm the plugin, rolls the line back
// and says what to do; disable's step removes the line.
func TestConfigureCoreDNS(t *testing.T) {
	kc := kubetest.Start(t, nil)
	ctx := context.Background()
	c, err := NewCluster("k1", kc.Config)
	if err != nil {
		t.Fatal(err)
	}
	v := deploy.DefaultValues()
	v.ClusterName, v.ClusterID = "c1", 1
	log := logging.OrDiscard(nil)

	// No CoreDNS ConfigMap: a message, no error, nothing written.
	res, err := c.configureCoreDNS(ctx, v, CoreDNSAuto, time.Second, log)
	if err != nil || res.Configured || !strings.Contains(res.Message, "no ConfigMap kube-system/coredns") {
		t.Fatalf("without CoreDNS: %+v, %v", res, err)
	}
	if _, err := kc.Client.RbacV1().ClusterRoles().Get(ctx, "clustermesh-coredns", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("ClusterRole written without CoreDNS: %v", err)
	}

	if _, err := kc.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: corednsNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := kc.Client.CoreV1().ConfigMaps(corednsNamespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: corednsName}, Data: map[string]string{corednsKey: kubeadmCorefile},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"k8s-app": "kube-dns"}
	if _, err := kc.Client.AppsV1().Deployments(corednsNamespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: corednsName},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{ServiceAccountName: "dns-sa", Containers: []corev1.Container{{Name: "coredns", Image: "coredns"}}},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	corefile := func() string {
		t.Helper()
		cm, err := kc.Client.CoreV1().ConfigMaps(corednsNamespace).Get(ctx, corednsName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.Data[corednsKey]
	}

	res, err = c.configureCoreDNS(ctx, v, CoreDNSConfigure, time.Second, log)
	if err != nil || !res.Configured || !res.Changed {
		t.Fatalf("configure: %+v, %v", res, err)
	}
	if !hasMulticluster(corefile()) {
		t.Fatalf("Corefile without the plugin after configure:\n%s", corefile())
	}
	crb, err := kc.Client.RbacV1().ClusterRoleBindings().Get(ctx, "clustermesh-coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(crb.Subjects) != 1 || crb.Subjects[0].Name != "dns-sa" || crb.Subjects[0].Namespace != corednsNamespace {
		t.Errorf("binding subjects %+v, want the Deployment's service account kube-system/dns-sa", crb.Subjects)
	}
	role, err := kc.Client.RbacV1().ClusterRoles().Get(ctx, "clustermesh-coredns", metav1.GetOptions{})
	if err != nil || len(role.Rules) == 0 || role.Rules[0].Resources[0] != "serviceimports" {
		t.Fatalf("ClusterRole: %+v, %v", role, err)
	}
	if res, err := c.configureCoreDNS(ctx, v, CoreDNSAuto, time.Second, log); err != nil || !res.Configured || res.Changed {
		t.Fatalf("re-run: %+v, %v; want configured, unchanged", res, err)
	}

	// disable's step.
	if removed, err := c.unconfigureCoreDNS(ctx); err != nil || !removed || corefile() != kubeadmCorefile {
		t.Fatalf("unconfigure: %v, %v; Corefile\n%s", removed, err, corefile())
	}

	// auto with no CoreDNS pod running: nothing confirms the plugin.
	res, err = c.configureCoreDNS(ctx, v, CoreDNSAuto, 2*time.Second, log)
	if err != nil || res.Configured || res.Changed {
		t.Fatalf("auto without pods: %+v, %v", res, err)
	}
	for _, want := range []string{"did not confirm", "no running CoreDNS pod", "rolled back", "--coredns configure"} {
		if !strings.Contains(res.Message, want) {
			t.Errorf("message %q does not say %q", res.Message, want)
		}
	}
	if corefile() != kubeadmCorefile {
		t.Errorf("Corefile not rolled back:\n%s", corefile())
	}
}

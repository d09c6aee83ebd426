package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/internal/proc"
)

// waitTimeout bounds every wait; generous for shared machines (it is no
// speed threshold: the test only fails when something never happens).
const waitTimeout = 2 * time.Minute

var (
	crdGVR    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	importGVR = schema.GroupVersionResource{Group: "multicluster.x-k8s.io", Version: "v1beta1", Resource: "serviceimports"}
)

// TestMultiClusterDNS: CoreDNS built from hack/kind/coredns, with the
// Corefile line enable writes (`multicluster clusterset.local`), answers
// clusterset.local names from ServiceImports and EndpointSlices in a real
// kube-apiserver: the clusterset IP, SRV for named ports, every ready
// endpoint and the per-pod names of a headless service, the schema version,
// NXDOMAIN for what does not exist, and it follows updates and deletions.
func TestMultiClusterDNS(t *testing.T) {
	kube := kubetest.Start(t, nil)
	bin := coreDNS(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	v := deploy.DefaultValues()
	v.ClusterName, v.ClusterID = "c1", 1
	crds, err := deploy.Render(deploy.FileMCSCRD, v)
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Eventually(t, waitTimeout, "ServiceImport CRD served", func(ctx context.Context) error {
		_, err := dyn.Resource(importGVR).List(ctx, metav1.ListOptions{})
		return err
	})
	const ns = "shop"
	if _, err := kube.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	imports := dyn.Resource(importGVR).Namespace(ns)
	mkImport := func(name, typ string, ips []any, ports []any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec":     map[string]any{"type": typ, "ips": ips, "ports": ports},
		}}
		if _, err := imports.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mkImport("web", "ClusterSetIP", []any{"10.96.100.10"}, []any{map[string]any{"name": "http", "protocol": "TCP", "port": int64(80)}})
	mkImport("db", "Headless", nil, []any{map[string]any{"name": "pg", "protocol": "TCP", "port": int64(5432)}})
	ready, notReady, db0 := true, false, "db-0"
	mkSlice := func(name, cluster string, eps ...discoveryv1.Endpoint) {
		t.Helper()
		es := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
				"multicluster.kubernetes.io/service-name":   "db",
				"multicluster.kubernetes.io/source-cluster": cluster,
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   eps,
		}
		if _, err := kube.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mkSlice("db-c1", "c1", discoveryv1.Endpoint{Addresses: []string{"10.1.0.5"}, Hostname: &db0, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	mkSlice("db-c2", "c2",
		discoveryv1.Endpoint{Addresses: []string{"10.2.0.5"}, Hostname: &db0},
		discoveryv1.Endpoint{Addresses: []string{"10.2.0.6"}},
		discoveryv1.Endpoint{Addresses: []string{"10.2.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}},
	)

	server := startCoreDNS(t, bin, kube.Kubeconfig)

	check := func(what, qname string, qtype uint16, wantRcode int, want ...string) {
		t.Helper()
		poll.Eventually(t, waitTimeout, what, func(ctx context.Context) error {
			rcode, got, err := query(ctx, server, qname, qtype)
			if err != nil {
				return err
			}
			if rcode != wantRcode || !slices.Equal(got, want) {
				return fmt.Errorf("%s %s: %s %q, want %s %q", qname, dns.TypeToString[qtype], dns.RcodeToString[rcode], got, dns.RcodeToString[wantRcode], want)
			}
			return nil
		})
	}
	check("clusterset IP", "web.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.96.100.10")
	check("names are case-insensitive", "WEB.Shop.svc.ClusterSet.local.", dns.TypeA, dns.RcodeSuccess, "10.96.100.10")
	check("SRV of the named port", "_http._tcp.web.shop.svc.clusterset.local.", dns.TypeSRV, dns.RcodeSuccess, "0 100 80 web.shop.svc.clusterset.local.")
	check("no IPv6 clusterset IP: NODATA", "web.shop.svc.clusterset.local.", dns.TypeAAAA, dns.RcodeSuccess)
	check("headless: every ready endpoint of every cluster", "db.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.1.0.5", "10.2.0.5", "10.2.0.6")
	check("headless per-pod name", "db-0.c2.db.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.2.0.5")
	check("headless per-pod name, address-derived", "10-2-0-6.c2.db.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.2.0.6")
	check("headless not-ready endpoint", "10-2-0-7.c2.db.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError)
	check("headless SRV: one per endpoint", "_pg._tcp.db.shop.svc.clusterset.local.", dns.TypeSRV, dns.RcodeSuccess,
		"0 100 5432 10-2-0-6.c2.db.shop.svc.clusterset.local.", "0 100 5432 db-0.c1.db.shop.svc.clusterset.local.", "0 100 5432 db-0.c2.db.shop.svc.clusterset.local.")
	check("schema version", "dns-version.clusterset.local.", dns.TypeTXT, dns.RcodeSuccess, `"1.0.0"`)
	check("unknown service", "nope.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError)
	check("no per-cluster name for a clusterset IP service", "c1.web.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError)

	// An update of the ServiceImport changes the answer.
	web, err := imports.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedStringSlice(web.Object, []string{"10.96.100.20"}, "spec", "ips"); err != nil {
		t.Fatal(err)
	}
	if _, err := imports.Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("clusterset IP after the update", "web.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.96.100.20")

	// An endpoint going away leaves the others.
	if err := kube.Client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "db-c1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("headless after c1's slice is gone", "db.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.2.0.5", "10.2.0.6")

	// Deletion: NXDOMAIN.
	if err := imports.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("deleted ServiceImport", "web.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError)
	check("the other import still answers", "db-0.c2.db.shop.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, "10.2.0.5")
}

// startCoreDNS runs CoreDNS with `multicluster clusterset.local` against the
// kubeconfig and returns its UDP address once the ready plugin reports the
// plugin's caches synced.
//
// Its ports are picked free, then bound by CoreDNS: another process may
// take one in between (the machine runs other tests), so a start that fails
// on a taken port is tried again on other ports.
func startCoreDNS(t *testing.T, bin, kubeconfig string) string {
	t.Helper()
	for attempt := 1; ; attempt++ {
		server, err := tryStartCoreDNS(t, bin, kubeconfig)
		if err == nil {
			return server
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("CoreDNS start %d: a port was taken meanwhile; again on other ports", attempt)
	}
}

func tryStartCoreDNS(t *testing.T, bin, kubeconfig string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	dnsPort, readyPort := freePort(t, "dns"), freePort(t, "tcp")
	corefile := fmt.Sprintf(`.:%d {
    errors
    ready 127.0.0.1:%d
    multicluster clusterset.local {
        kubeconfig %s
    }
}
`, dnsPort, readyPort, kubeconfig)
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	p := proc.StartT(t, proc.Spec{Name: "coredns", Path: bin, Args: []string{"-conf", path}, LogDir: dir})
	readyURL := fmt.Sprintf("http://127.0.0.1:%d/ready", readyPort)
	var exited error
	poll.Eventually(t, waitTimeout, "CoreDNS ready (the plugin's caches synced)", func(ctx context.Context) error {
		if p.Exited() {
			exited = fmt.Errorf("CoreDNS exited: %v\n%s", p.Err(), p.Tail(4096))
			return nil
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, readyURL, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", readyURL, resp.Status)
		}
		return nil
	})
	if exited != nil {
		return "", exited
	}
	// The line clustermesh enable looks for to confirm the plugin
	// (cli/mesh/coredns.go, corednsPluginStarted).
	poll.Eventually(t, waitTimeout, "the plugin's startup line in CoreDNS's log", func() (bool, string) {
		b, err := os.ReadFile(p.LogPath)
		return err == nil && strings.Contains(string(b), "plugin/multicluster: serving"), p.Tail(2048)
	})
	return fmt.Sprintf("127.0.0.1:%d", dnsPort), nil
}

// query asks server over UDP and returns the RCODE and the answers' data
// (the record without its header), sorted.
func query(ctx context.Context, server, qname string, qtype uint16) (int, []string, error) {
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	r, _, err := c.ExchangeContext(ctx, m, server)
	if err != nil {
		return 0, nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		out = append(out, strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	sort.Strings(out)
	return r.Rcode, out, nil
}

// freePort returns a port free on 127.0.0.1 for network (tcp or udp) now.
// freePort returns a port free on 127.0.0.1 for TCP, or on every address
// for TCP and UDP both ("dns": CoreDNS serves DNS on both, on every address).
func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "dns" {
		for range 20 {
			l, err := net.Listen("tcp", ":0")
			if err != nil {
				t.Fatal(err)
			}
			port := l.Addr().(*net.TCPAddr).Port
			c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
			l.Close()
			if err == nil {
				c.Close()
				return port
			}
		}
		t.Fatal("no port free for both TCP and UDP in 20 tries")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

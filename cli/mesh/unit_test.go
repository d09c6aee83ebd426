package mesh

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// The clusters Secret, written out as the kubelet mounts it, is loadable by
// the kvstore package exactly as the agent loads it.
func TestClustersSecretIsAgentConfigDir(t *testing.T) {
	ca := pkitest.CA(t, "test-ca")
	cert, key := pkitest.ClientPEM(t, ca, UserRemote)
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretClusters, Namespace: "ns"}}
	for _, e := range []Entry{
		{Name: "c1", ID: 1, Endpoint: "https://127.0.0.11:32379", CA: ca.CertPEM(), Cert: cert, Key: key},
		{Name: "c2", ID: 2, Endpoint: "https://127.0.0.12:31000", CA: ca.CertPEM(), Cert: cert, Key: key},
	} {
		if err := e.put(s); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	if err := writeSecretDir(s, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"c1", "c2"} {
		cfg, err := kvstore.LoadConfig(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("cluster %s: %v", name, err)
		}
		for _, f := range []string{cfg.CAFile, cfg.CertFile, cfg.KeyFile} {
			if filepath.Dir(f) != dir {
				t.Errorf("cluster %s: file %s not resolved into %s", name, f, dir)
			}
			if _, err := os.Stat(f); err != nil {
				t.Errorf("cluster %s: %v", name, err)
			}
		}
	}
	got, err := Entries(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "c1" || got[1].ID != 2 || got[1].Endpoint != "https://127.0.0.12:31000" || string(got[1].Key) != string(key) {
		t.Fatalf("entries = %+v", got)
	}

	// A bad entry is named and leaves the others readable.
	bad := s.DeepCopy()
	bad.Data["c3"] = []byte("endpoints: [https://10.0.0.3:2379]\nbogus: 1\n")
	bad.Data["c4"] = []byte("endpoints: [https://10.0.0.4:2379]\ntrusted-ca-file: c4.ca.crt\ncert-file: c4.client.crt\nkey-file: c4.client.key\n")
	got, err = Entries(bad)
	if !errors.Is(err, ErrBadEntry) || !strings.Contains(err.Error(), "cluster c3") || !strings.Contains(err.Error(), "cluster c4") || len(got) != 2 {
		t.Fatalf("entries with bad c3 and c4 = %d entries, %v; want c1 and c2 with c3 and c4 named", len(got), err)
	}

	// Unchanged content writes nothing; changed content swaps ..data.
	gen, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := writeSecretDir(s, dir); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(filepath.Join(dir, "..data")); again != gen {
		t.Errorf("rewriting unchanged data swapped ..data (%s -> %s)", gen, again)
	}

	// Removing an entry removes its files from the directory too.
	removeEntry(s, "c2")
	if err := writeSecretDir(s, dir); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	gens := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "c2") {
			t.Errorf("file %s left after removing c2", e.Name())
		}
		if strings.HasPrefix(e.Name(), "..gen-") {
			gens++
		}
	}
	if again, _ := os.Readlink(filepath.Join(dir, "..data")); again == gen || gens != 1 {
		t.Errorf("..data %s (was %s), %d generations kept; want a new one and the old removed", again, gen, gens)
	}
	if _, err := kvstore.LoadConfig(filepath.Join(dir, "c1")); err != nil {
		t.Errorf("c1 after rewrite: %v", err)
	}
	if _, ok := s.Annotations[annotationIDPrefix+"c2"]; ok {
		t.Error("ID annotation of c2 left")
	}
}

func TestLeafValid(t *testing.T) {
	ca, other := pkitest.CA(t, "test-ca"), pkitest.CA(t, "other-ca")
	spec := serverLeaf("clustermesh-system", "c1", []string{"10.96.0.10", "mesh.example.com"})
	issue := func(ca *pki.CA, opts pki.IssueOptions) map[string][]byte {
		c, k := pkitest.Issue(t, ca, opts)
		return map[string][]byte{KeyCACert: ca.CertPEM(), KeyCert: c, KeyKey: k}
	}
	now := time.Now()
	narrow := spec.opts
	narrow.IPs = narrow.IPs[:1]
	for _, tc := range []struct {
		name string
		data map[string][]byte
		now  time.Time
		want bool
	}{
		{"good", issue(ca, spec.opts), now, true},
		{"other CA", issue(other, spec.opts), now, false},
		{"missing SAN", issue(ca, narrow), now, false},
		{"expiring within 30 days", issue(ca, spec.opts), now.Add(pki.DefaultLeafLifetime - 10*24*time.Hour), false},
		{"wrong CN", issue(ca, pki.IssueOptions{CommonName: "c2.clustermesh", Server: true, DNSNames: spec.opts.DNSNames, IPs: spec.opts.IPs}), now, false},
		{"empty", map[string][]byte{}, now, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := leafValid(tc.data, ca, ca.CertPEM(), spec, tc.now); got != tc.want {
				t.Fatalf("leafValid = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckPair(t *testing.T) {
	ca, other := pkitest.CA(t, "test-ca"), pkitest.CA(t, "other-ca")
	mk := func(ctxName, name string, id uint32, ca *pki.CA, cidrs ...string) *member {
		m := &member{c: &Cluster{Context: ctxName, Namespace: "clustermesh-system"}, info: Info{Name: name, ID: id, MaxClusterID: 255}, ca: trustAnchor{ca.Certificate(), ca.CertPEM()}}
		for _, s := range cidrs {
			m.podCIDRs = append(m.podCIDRs, netip.MustParsePrefix(s))
		}
		return m
	}
	c1 := mk("ctx1", "c1", 1, ca, "10.1.0.0/24", "10.1.1.0/24")
	for _, tc := range []struct {
		name string
		b    *member
		want []error
	}{
		{"compatible", mk("ctx2", "c2", 2, ca, "10.2.0.0/24"), nil},
		{"same ID", mk("ctx2", "c2", 1, ca, "10.2.0.0/24"), []error{ErrIDCollision}},
		{"same name", mk("ctx2", "c1", 2, ca, "10.2.0.0/24"), []error{ErrNameCollision}},
		// Clusters need not share a CA: each side's peer certificate is
		// issued by the other's.
		{"other CA", mk("ctx2", "c2", 2, other, "10.2.0.0/24"), nil},
		{"overlapping CIDR", mk("ctx2", "c2", 2, ca, "10.1.0.128/25"), []error{ErrCIDROverlap}},
		{"all at once", mk("ctx2", "c2", 1, other, "10.1.1.128/25"), []error{ErrIDCollision, ErrCIDROverlap}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := checkPair(context.Background(), c1, tc.b, true)
			if len(ps) != len(tc.want) {
				t.Fatalf("problems = %v, want %v", ps, tc.want)
			}
			err := &CheckError{Op: "connect", Problems: ps}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("error %v does not match %v", err, w)
				}
			}
			for _, p := range ps {
				if p.Fix == "" || !strings.Contains(p.Reason, "c1") {
					t.Errorf("problem %q lacks a fix or does not name the cluster", p.Reason)
				}
			}
		})
	}

	// A cluster already connected to c1 with ID 3 collides with a newcomer
	// that has ID 3, even though the CLI has no context for it.
	c1.existing = []Entry{{Name: "c1", ID: 1}, {Name: "c3", ID: 3}}
	if ps := checkPair(context.Background(), c1, mk("ctx2", "c2", 1, ca, "10.2.0.0/24"), true); len(ps) != 1 || !strings.Contains(ps[0].Fix, "--cluster-id 2 ") {
		t.Fatalf("ID collision fix = %v, want the lowest unused ID 2 suggested", ps)
	}
	ps := checkPair(context.Background(), c1, mk("ctx2", "c2", 3, ca, "10.2.0.0/24"), true)
	if !errors.Is(&CheckError{Problems: ps}, ErrIDCollision) || !strings.Contains(ps[0].Reason, "c3") {
		t.Fatalf("problems = %v, want an ID collision naming c3", ps)
	}
}

func TestEndpointHost(t *testing.T) {
	for _, tc := range []struct {
		in, host string
		ok       bool
	}{
		{"https://10.0.0.1:2379", "10.0.0.1", true},
		{"https://[fd00::1]:2379", "fd00::1", true},
		{"mesh.example.com:443", "mesh.example.com", true},
		{"http://10.0.0.1:2379", "", false},
		{"https://10.0.0.1", "", false},
		{"10.0.0.1", "", false},
	} {
		h, err := endpointHost(tc.in)
		if (err == nil) != tc.ok || h != tc.host {
			t.Errorf("endpointHost(%q) = %q, %v; want %q ok=%v", tc.in, h, err, tc.host, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("endpointHost(%q): %v does not wrap ErrInvalidArgument", tc.in, err)
		}
	}
}

func TestDecodeKV(t *testing.T) {
	svc := &api.Service{Cluster: "c1", ClusterID: 1, Namespace: "demo", Name: "echo", Global: true, Shared: true}
	b, err := svc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, kind string
		value     []byte
		wantErr   bool
	}{
		{svc.Key(), "Service", b, false},
		{api.ServiceKey("c1", "demo", "other"), "raw", b, true}, // value claims another key
		{api.SyncedKey("c1", api.KindService), "SyncedCanary", []byte("1"), false},
		{api.ClusterPrefix(api.KindAgents, "c1") + "n1", "raw", []byte("{"), true},
		{"elsewhere/x", "raw", []byte("x"), true},
	} {
		kv := decodeKV(tc.key, tc.value)
		if kv.Kind != tc.kind || (kv.Error != "") != tc.wantErr {
			t.Errorf("decodeKV(%s) = kind %s error %q; want kind %s error=%v", tc.key, kv.Kind, kv.Error, tc.kind, tc.wantErr)
		}
	}
}

// TestStoreWaitUntil drives the one wait of enable and connect with a
// scripted check: it retries only while every problem is a store that does
// not answer, reports progress once per reason, and gives up as told.
func TestStoreWaitUntil(t *testing.T) {
	down := problem(ErrUnreachable, "start it", "store of c1 does not answer")
	down2 := problem(ErrUnreachable, "start it", "store of c1 refuses the admin")
	clash := problem(ErrIDCollision, "renumber", "both have ID 1")
	for _, tc := range []struct {
		name     string
		For      time.Duration
		script   [][]Problem // one per check; the last repeats
		checks   int
		progress []string
		err      error // sentinel, or nil for success
		outcome  string
	}{
		{name: "serves at once", script: [][]Problem{nil}, checks: 1},
		{name: "serves after two reasons", script: [][]Problem{{down}, {down}, {down2}, nil}, checks: 4,
			progress: []string{down.Reason, down2.Reason}},
		{name: "check once", For: -1, script: [][]Problem{{down}}, checks: 1, err: ErrUnreachable, outcome: "gave up"},
		{name: "time will not fix it", script: [][]Problem{{down, clash}}, checks: 1, err: ErrIDCollision, outcome: "gave up"},
		{name: "runs out", For: time.Nanosecond, script: [][]Problem{{down}}, checks: 1,
			err: ErrUnreachable, outcome: "(waited 0s for the stores) gave up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var progress []string
			checks := 0
			w := StoreWait{For: tc.For, Progress: func(l string) { progress = append(progress, l) }}
			err := w.until(context.Background(), "op", "gave up", func(context.Context) []Problem {
				ps := tc.script[min(checks, len(tc.script)-1)]
				checks++
				return ps
			})
			if checks != tc.checks {
				t.Errorf("%d checks, want %d", checks, tc.checks)
			}
			if len(progress) != len(tc.progress) {
				t.Fatalf("progress %q, want one line for each of %q", progress, tc.progress)
			}
			for i, want := range tc.progress {
				if !strings.HasPrefix(progress[i], "waiting (") || !strings.HasSuffix(progress[i], want) {
					t.Errorf("progress line %q, want waiting (…): %s", progress[i], want)
				}
			}
			if tc.err == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			var ce *CheckError
			if !errors.As(err, &ce) || !errors.Is(err, tc.err) || !strings.Contains(err.Error(), "op "+tc.outcome) {
				t.Errorf("err = %v, want a CheckError with %v saying %q", err, tc.err, "op "+tc.outcome)
			}
		})
	}
}

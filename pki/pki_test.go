package pki

import (
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := NewCA("mesh-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		opts  IssueOptions
		usage x509.ExtKeyUsage
	}{
		{"server", IssueOptions{CommonName: "c1", DNSNames: []string{"c1.mesh"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true}, x509.ExtKeyUsageServerAuth},
		{"client", IssueOptions{CommonName: "remote", Client: true}, x509.ExtKeyUsageClientAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(keyPEM) == 0 {
				t.Fatal("empty key")
			}
			cert, err := ParseCertificate(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != tt.opts.CommonName {
				t.Fatalf("CN = %q, want %q", cert.Subject.CommonName, tt.opts.CommonName)
			}
			verify := func(root *CA) error {
				pool := x509.NewCertPool()
				pool.AddCert(root.Certificate())
				_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{tt.usage}})
				return err
			}
			if err := verify(ca); err != nil {
				t.Fatalf("verify against issuing CA: %v", err)
			}
			if err := verify(other); err == nil {
				t.Fatal("certificate verified against an unrelated CA")
			}
		})
	}
}

func TestLeafNeverOutlivesCA(t *testing.T) {
	ca, err := NewCA("short", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue(IssueOptions{CommonName: "x", Client: true, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ParseCertificate(certPEM)
	if cert.NotAfter.After(ca.Certificate().NotAfter) {
		t.Fatalf("leaf expires %v after CA %v", cert.NotAfter, ca.Certificate().NotAfter)
	}
}

func TestLoadCAErrors(t *testing.T) {
	ca, _ := NewCA("a", 0)
	other, _ := NewCA("b", 0)
	leaf, leafKey, _ := ca.Issue(IssueOptions{CommonName: "leaf", Client: true})
	tests := []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"roundtrip", ca.CertPEM(), ca.KeyPEM(), ""},
		{"mismatched key", ca.CertPEM(), other.KeyPEM(), "does not match"},
		{"not a CA", leaf, leafKey, "not a CA"},
		{"garbage", []byte("nope"), ca.KeyPEM(), "no PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCA(tt.cert, tt.key)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestIssueRefusesBadOptions(t *testing.T) {
	ca, _ := NewCA("a", 0)
	if _, _, err := ca.Issue(IssueOptions{Client: true}); err == nil {
		t.Fatal("empty CN accepted")
	}
	if _, _, err := ca.Issue(IssueOptions{CommonName: "x"}); err == nil {
		t.Fatal("no usage accepted")
	}
}

// TestCrossSignedRotation checks the property a CA rotation rests on: a leaf
// of the new CA, sent with the new CA's certificate cross-signed by the old
// one, verifies for verifiers that trust the old CA, the new one, or both,
// and for nobody else.
func TestCrossSignedRotation(t *testing.T) {
	old, err := NewCA("old", 0)
	if err != nil {
		t.Fatal(err)
	}
	next, err := NewCA("next", 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other", 0)
	if err != nil {
		t.Fatal(err)
	}
	cross, err := old.CrossSign(next)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, _, err := next.WithChain(cross).Issue(IssueOptions{CommonName: "agent", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ParseCertificates(leafPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1].Issuer.CommonName != "old" || chain[1].Subject.CommonName != "next" {
		t.Fatalf("issued file holds %d certificates; want the leaf and next cross-signed by old", len(chain))
	}
	if got := next.WithChain(cross).Chain(); string(got) != string(cross) || next.Chain() != nil {
		t.Fatal("WithChain must return a copy carrying the chain and leave the CA unchanged")
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	for _, tc := range []struct {
		name  string
		roots []*CA
		ok    bool
	}{
		{"old only", []*CA{old}, true},
		{"next only", []*CA{next}, true},
		{"both", []*CA{old, next}, true},
		{"another CA", []*CA{other}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots := x509.NewCertPool()
			for _, ca := range tc.roots {
				roots.AddCert(ca.Certificate())
			}
			_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if (err == nil) != tc.ok {
				t.Fatalf("verify: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if _, err := ParseCertificates([]byte("garbage")); err == nil {
		t.Fatal("ParseCertificates accepted a bundle without certificates")
	}
}

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

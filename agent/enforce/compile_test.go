package enforce

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/policy"
)

// render lists entries as "dir peer proto/port verdict", sorted.
func render(p bpf.IdentityPolicy) string {
	var out []string
	for k, v := range p.Entries {
		out = append(out, fmt.Sprintf("%s %d %d/%d %s", k.Dir, k.Peer, k.Proto, k.Port, v))
	}
	slices.Sort(out)
	return fmt.Sprintf("in=%v eg=%v %s", p.Ingress, p.Egress, strings.Join(out, ", "))
}

func TestCompile(t *testing.T) {
	ipc := map[netip.Addr]uint32{
		netip.MustParseAddr("10.1.0.5"): 0x10001,
		netip.MustParseAddr("10.1.0.6"): 0x10002,
		netip.MustParseAddr("10.2.0.5"): 0x20001,
	}
	tcp := func(p uint16) policy.Port { return policy.Port{Protocol: "TCP", Port: p} }
	for _, tc := range []struct {
		name     string
		ep       policy.EndpointPolicy
		want     string
		warnings int
	}{
		{"nothing enforced", policy.EndpointPolicy{}, "in=false eg=false ", 0},
		{"ingress from one identity on TCP 8080, host admitted",
			policy.EndpointPolicy{Ingress: policy.DirectionPolicy{Enforced: true, Allow: []policy.Entry{{Identity: 0x20001, Port: tcp(8080)}}}},
			"in=true eg=false ingress 1 0/0 allow, ingress 131073 6/8080 allow", 0},
		{"deny only: allow-all plus the deny",
			policy.EndpointPolicy{Egress: policy.DirectionPolicy{Deny: []policy.Entry{{Identity: 0x10002, Port: policy.Port{Protocol: "UDP"}}}}},
			"in=false eg=true egress 0 0/0 allow, egress 65538 17/0 deny", 0},
		{"deny replaces the allow of the same key",
			policy.EndpointPolicy{Egress: policy.DirectionPolicy{Enforced: true,
				Allow: []policy.Entry{{Identity: 0x10002, Port: tcp(80)}},
				Deny:  []policy.Entry{{Identity: 0x10002, Port: tcp(80)}}}},
			"in=false eg=true egress 65538 6/80 deny", 0},
		{"port range expands",
			policy.EndpointPolicy{Egress: policy.DirectionPolicy{Enforced: true, Allow: []policy.Entry{{Port: policy.Port{Protocol: "TCP", Port: 80, EndPort: 82}}}}},
			"in=false eg=true egress 0 6/80 allow, egress 0 6/81 allow, egress 0 6/82 allow", 0},
		{"CIDR: identities inside minus except, with a warning",
			policy.EndpointPolicy{Egress: policy.DirectionPolicy{Enforced: true, Allow: []policy.Entry{{
				CIDR: netip.MustParsePrefix("10.1.0.0/16"), Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.6/32")}, Port: tcp(53), Rule: "r"}}}},
			"in=false eg=true egress 65537 6/53 allow", 1},
		{"default route: world too",
			policy.EndpointPolicy{Egress: policy.DirectionPolicy{Enforced: true, Allow: []policy.Entry{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}}}},
			"in=false eg=true egress 131073 0/0 allow, egress 2 0/0 allow, egress 65537 0/0 allow, egress 65538 0/0 allow", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings := Compile(tc.ep, ipc)
			if s := render(got); s != tc.want {
				t.Errorf("got  %s\nwant %s", s, tc.want)
			}
			if len(warnings) != tc.warnings {
				t.Errorf("warnings %q, want %d", warnings, tc.warnings)
			}
		})
	}
}

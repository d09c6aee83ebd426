package enforce

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/policy"
)

// MaxRangePorts bounds how many ports one port range may expand to: the
// datapath matches single ports, so a range costs one entry per port.
const MaxRangePorts = 1024

var protocols = map[string]uint8{"": 0, "TCP": 6, "UDP": 17, "SCTP": 132}

// Compile turns an endpoint's computed policy into datapath entries.
// ipcache (address → identity) resolves CIDR peers: the datapath knows
// identities, not prefixes, so a CIDR matches the identities of the known
// addresses inside it (minus its exceptions), and addresses outside every
// cluster (world) only when the CIDR is a default route with no exception.
// Each approximation is returned as a warning naming the rule.
//
// A direction with deny rules and no policy enforcing it gets an allow-all
// entry, so that only the denies bite (Cilium's semantics of a deny-only
// policy). A direction enforced for ingress always admits the node itself
// (IdentityHost), as kubelet probes need, unless a rule denies it.
func Compile(ep policy.EndpointPolicy, ipcache map[netip.Addr]uint32) (bpf.IdentityPolicy, []string) {
	out := bpf.IdentityPolicy{Entries: map[bpf.PolicyKey]bpf.Verdict{}}
	var warnings []string
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		dp := ep.Direction(d)
		dir := bpf.DirIngress
		if d == policy.Egress {
			dir = bpf.DirEgress
		}
		enforced := dp.Enforced || len(dp.Deny) > 0
		if !enforced {
			continue
		}
		if d == policy.Ingress {
			out.Ingress = true
			out.Entries[bpf.PolicyKey{Dir: dir, Peer: bpf.IdentityHost}] = bpf.Allow
		} else {
			out.Egress = true
		}
		if !dp.Enforced {
			out.Entries[bpf.PolicyKey{Dir: dir}] = bpf.Allow
		}
		for _, verdict := range []bpf.Verdict{bpf.Allow, bpf.Deny} {
			entries := dp.Allow
			if verdict == bpf.Deny {
				entries = dp.Deny
			}
			for _, en := range entries {
				peers, w := peersOf(en, ipcache)
				warnings = append(warnings, w...)
				ports, w := portsOf(en)
				warnings = append(warnings, w...)
				for _, p := range peers {
					for _, k := range ports {
						k.Dir, k.Peer = dir, p
						// Deny entries are written last: they replace an
						// allow of the same key.
						out.Entries[k] = verdict
					}
				}
			}
		}
	}
	return out, warnings
}

func peersOf(en policy.Entry, ipcache map[netip.Addr]uint32) ([]uint32, []string) {
	if !en.CIDR.IsValid() {
		return []uint32{en.Identity}, nil
	}
	seen := map[uint32]bool{}
	var out []uint32
	if en.CIDR.Bits() == 0 && len(en.Except) == 0 {
		seen[bpf.IdentityWorld] = true
		out = append(out, bpf.IdentityWorld)
	}
addrs:
	for a, id := range ipcache {
		if !en.CIDR.Contains(a) || seen[id] {
			continue
		}
		for _, x := range en.Except {
			if x.Contains(a) {
				continue addrs
			}
		}
		seen[id] = true
		out = append(out, id)
	}
	var warnings []string
	if !seen[bpf.IdentityWorld] {
		warnings = append(warnings, fmt.Sprintf("%s: CIDR %s matches the mesh's pods and nodes inside it only, not outside addresses", en.Rule, en.CIDR))
	}
	return out, warnings
}

func portsOf(en policy.Entry) ([]bpf.PolicyKey, []string) {
	proto, ok := protocols[en.Port.Protocol]
	if !ok {
		return nil, []string{fmt.Sprintf("%s: protocol %q not enforced", en.Rule, en.Port.Protocol)}
	}
	first, last := en.Port.Port, en.Port.Port
	if en.Port.EndPort > first {
		last = en.Port.EndPort
	}
	var warnings []string
	if int(last)-int(first)+1 > MaxRangePorts {
		warnings = append(warnings, fmt.Sprintf("%s: port range %d-%d cut to its first %d ports", en.Rule, first, last, MaxRangePorts))
		last = first + MaxRangePorts - 1
	}
	out := make([]bpf.PolicyKey, 0, int(last-first)+1)
	for p := int(first); p <= int(last); p++ {
		out = append(out, bpf.PolicyKey{Proto: proto, Port: uint16(p)})
	}
	return out, warnings
}

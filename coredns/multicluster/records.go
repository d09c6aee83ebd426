package multicluster

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// schemaVersion is the version of the KEP-1645 DNS specification answered
// at dns-version.<zone> (its section 2.2).
const schemaVersion = "1.0.0"

// ttl of every record: short, because a ServiceImport's IPs and a headless
// service's endpoints change as clusters come and go.
const ttl = 5

// service is what DNS needs of a ServiceImport, validated.
type service struct {
	namespace, name string
	headless        bool
	ips             []netip.Addr // the clusterset IPs; empty for headless
	ports           []port
}

// port is a ServiceImport port; only named ports get SRV records.
type port struct {
	name     string // lower case
	protocol string // lower case: tcp, udp, sctp
	number   uint16
}

// endpoint is one ready endpoint of a headless service, from an
// EndpointSlice of the cluster that exports it.
type endpoint struct {
	cluster  string // the cluster ID (multicluster.kubernetes.io/source-cluster)
	hostname string // the endpoint's hostname, or one derived from its address
	addrs    []netip.Addr
}

// source is the state the records are computed from (the informers'
// caches in CoreDNS, a literal in tests).
type source interface {
	service(namespace, name string) (*service, bool)
	// endpoints returns the ready endpoints of the headless service.
	endpoints(namespace, name string) []endpoint
	// hasNamespace tells whether any ServiceImport is in the namespace.
	hasNamespace(namespace string) bool
}

// answer is the outcome of a lookup: an RCODE with the records of the
// question's type (empty with RcodeSuccess: the name exists, the type not).
type answer struct {
	rcode  int
	answer []dns.RR
	extra  []dns.RR
}

// lookup answers a question for qname (lower case, fully qualified) in
// zone (lower case, fully qualified, qname inside it) following the KEP's
// DNS specification: the names are
//
//	dns-version.<zone>                                     TXT
//	<svc>.<ns>.svc.<zone>                                  A/AAAA
//	_<port>._<proto>.<svc>.<ns>.svc.<zone>                 SRV
//	<hostname>.<cluster-id>.<svc>.<ns>.svc.<zone>          A/AAAA (headless)
//
// and everything else in the zone is NXDOMAIN. PTR records are not served:
// the derived Service already gives each clusterset IP a cluster.local PTR
// record, and the specification asks for one only where none exists.
func lookup(src source, zone, qname string, qtype uint16) answer {
	if qname == zone {
		return nodata() // the apex: SOA and NS are written by the caller.
	}
	rel := strings.TrimSuffix(qname, "."+zone)
	if rel == qname {
		return nxdomain()
	}
	labels := dns.SplitDomainName(rel)
	n := len(labels)
	if n == 1 && labels[0] == "dns-version" {
		return filter(qtype, []dns.RR{&dns.TXT{Hdr: hdr(qname, dns.TypeTXT), Txt: []string{schemaVersion}}}, nil)
	}
	if labels[n-1] != "svc" {
		return nxdomain()
	}
	switch n {
	case 1: // svc.<zone>: an empty non-terminal.
		return nodata()
	case 2: // <ns>.svc.<zone>
		if src.hasNamespace(labels[0]) {
			return nodata()
		}
		return nxdomain()
	}
	svc, ok := src.service(labels[n-2], labels[n-3])
	if !ok {
		return nxdomain()
	}
	svcName := strings.Join(labels[n-3:], ".") + "." + zone
	var eps []endpoint
	if svc.headless {
		eps = src.endpoints(svc.namespace, svc.name)
	}
	switch n {
	case 3:
		var rrs []dns.RR
		if svc.headless {
			seen := map[netip.Addr]bool{}
			for _, ep := range eps {
				for _, a := range ep.addrs {
					if !seen[a] {
						seen[a] = true
						rrs = append(rrs, addrRR(qname, a))
					}
				}
			}
		} else {
			for _, a := range svc.ips {
				rrs = append(rrs, addrRR(qname, a))
			}
		}
		return filter(qtype, rrs, nil)
	case 4:
		// _<proto>.<svc> or <cluster-id>.<svc>: empty non-terminals when
		// something exists below them.
		first := labels[0]
		for _, p := range svc.ports {
			if p.name != "" && "_"+p.protocol == first {
				return nodata()
			}
		}
		for _, ep := range eps {
			if ep.cluster == first {
				return nodata()
			}
		}
		return nxdomain()
	case 5:
		a, b := labels[0], labels[1]
		if strings.HasPrefix(a, "_") && strings.HasPrefix(b, "_") {
			return srv(qname, qtype, svcName, svc, eps, a[1:], b[1:])
		}
		var rrs []dns.RR
		for _, ep := range eps {
			if ep.hostname == a && ep.cluster == b {
				for _, addr := range ep.addrs {
					rrs = append(rrs, addrRR(qname, addr))
				}
			}
		}
		return filter(qtype, rrs, nil)
	}
	return nxdomain()
}

// srv answers _<port>._<proto>.<svc>.<ns>.svc.<zone>: the service name for
// a clusterset IP service, every ready endpoint's per-pod name for a
// headless one, with their addresses in the additional section.
func srv(qname string, qtype uint16, svcName string, svc *service, eps []endpoint, portName, proto string) answer {
	var rrs, extra []dns.RR
	for _, p := range svc.ports {
		if p.name == "" || p.name != portName || p.protocol != proto {
			continue
		}
		if !svc.headless {
			rrs = append(rrs, &dns.SRV{Hdr: hdr(qname, dns.TypeSRV), Priority: 0, Weight: 100, Port: p.number, Target: svcName})
			for _, a := range svc.ips {
				extra = append(extra, addrRR(svcName, a))
			}
			continue
		}
		for _, ep := range eps {
			target := ep.hostname + "." + ep.cluster + "." + svcName
			rrs = append(rrs, &dns.SRV{Hdr: hdr(qname, dns.TypeSRV), Priority: 0, Weight: 100, Port: p.number, Target: target})
			for _, a := range ep.addrs {
				extra = append(extra, addrRR(target, a))
			}
		}
	}
	return filter(qtype, rrs, extra)
}

// filter keeps the records of the question's type; a name with records of
// other types only is NODATA, a name with none NXDOMAIN.
func filter(qtype uint16, rrs, extra []dns.RR) answer {
	if len(rrs) == 0 {
		return nxdomain()
	}
	var out []dns.RR
	for _, rr := range rrs {
		if qtype == dns.TypeANY || rr.Header().Rrtype == qtype {
			out = append(out, rr)
		}
	}
	if len(out) == 0 {
		return nodata()
	}
	return answer{rcode: dns.RcodeSuccess, answer: out, extra: extra}
}

func nxdomain() answer { return answer{rcode: dns.RcodeNameError} }
func nodata() answer   { return answer{rcode: dns.RcodeSuccess} }

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func addrRR(name string, a netip.Addr) dns.RR {
	if a.Is4() {
		return &dns.A{Hdr: hdr(name, dns.TypeA), A: a.AsSlice()}
	}
	return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: a.AsSlice()}
}

// soa is the zone's SOA record, for the authority section of negative
// answers (their TTL caps how long resolvers cache them).
func soa(zone string, serial uint32) dns.RR {
	return &dns.SOA{
		Hdr:     hdr(zone, dns.TypeSOA),
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  ttl,
	}
}

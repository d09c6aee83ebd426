// Package multicluster is a CoreDNS plugin serving the Multi-Cluster
// Services API's DNS names (KEP-1645, specification.md):
// <service>.<namespace>.svc.clusterset.local and, for headless services,
// <hostname>.<cluster-id>.<service>.<namespace>.svc.clusterset.local, from
// the ServiceImports and EndpointSlices the mesh writes in each cluster.
//
// It takes the Corefile syntax of the upstream plugin
// (github.com/coredns/multicluster), which is not on the Go module proxy,
// so a Corefile written for one works with the other:
//
//	multicluster [ZONES...] {
//	    kubeconfig KUBECONFIG [CONTEXT]
//	    noendpoints
//	    fallthrough [ZONES...]
//	}
package multicluster

import (
	"context"
	"strings"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

const pluginName = "multicluster"

// MultiCluster is the plugin's handler.
type MultiCluster struct {
	Next  plugin.Handler
	Zones []string // fully qualified, lower case
	Fall  fall.F

	src     source
	serial  func() uint32
	isReady func() bool
}

// Name implements plugin.Handler.
func (m *MultiCluster) Name() string { return pluginName }

// Ready implements the ready plugin's Readiness: not ready until the
// ServiceImports (and EndpointSlices) have been listed once, so a new
// CoreDNS pod does not answer NXDOMAIN for names that exist.
func (m *MultiCluster) Ready() bool { return m.isReady() }

// ServeDNS implements plugin.Handler.
func (m *MultiCluster) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	qname := strings.ToLower(state.QName())
	zone := plugin.Zones(m.Zones).Matches(qname)
	if zone == "" {
		return plugin.NextOrFailure(m.Name(), m.Next, ctx, w, r)
	}
	qtype := state.QType()
	var a answer
	if qname == zone && qtype == dns.TypeSOA {
		a = answer{rcode: dns.RcodeSuccess, answer: []dns.RR{soa(zone, m.serial())}}
	} else {
		a = lookup(m.src, zone, qname, qtype)
	}
	if a.rcode == dns.RcodeNameError && m.Fall.Through(qname) {
		return plugin.NextOrFailure(m.Name(), m.Next, ctx, w, r)
	}
	msg := new(dns.Msg)
	msg.SetRcode(r, a.rcode)
	msg.Authoritative = true
	// The records keep the case of the question's name.
	for _, rr := range a.answer {
		if strings.EqualFold(rr.Header().Name, state.QName()) {
			rr.Header().Name = state.QName()
		}
	}
	msg.Answer = a.answer
	msg.Extra = a.extra
	if len(a.answer) == 0 {
		msg.Ns = []dns.RR{soa(zone, m.serial())}
	}
	if err := w.WriteMsg(msg); err != nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, err)
	}
	return dns.RcodeSuccess, nil
}

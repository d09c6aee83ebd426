package apiserver

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/clustermesh/clustermesh/api"
)

// convertService builds the store form of a Kubernetes Service with the given
// mesh settings.
func convertService(cluster string, clusterID uint32, svc *corev1.Service, s ServiceSettings) *api.Service {
	out := &api.Service{
		Cluster:          cluster,
		ClusterID:        clusterID,
		Namespace:        svc.Namespace,
		Name:             svc.Name,
		Global:           s.Global,
		Shared:           s.Shared,
		Affinity:         s.Affinity,
		MinLocalBackends: s.MinLocalBackends,
	}
	if len(svc.Labels) > 0 {
		out.Labels = maps.Clone(svc.Labels)
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		// "None" (headless) and empty parse as invalid: no frontend.
		if a, err := netip.ParseAddr(ip); err == nil {
			out.ClusterIPs = append(out.ClusterIPs, a)
		}
	}
	for _, p := range svc.Spec.Ports {
		out.Ports = append(out.Ports, api.ServicePort{Name: p.Name, Port: uint16(p.Port), Protocol: protocol(p.Protocol)})
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		out.SessionAffinityTimeout = uint32(corev1.DefaultClientIPServiceAffinitySeconds)
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			out.SessionAffinityTimeout = uint32(*c.ClientIP.TimeoutSeconds)
		}
	}
	if p := svc.Spec.InternalTrafficPolicy; p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal {
		out.InternalTrafficLocal = true
	}
	if d := svc.Spec.TrafficDistribution; d != nil && (*d == corev1.ServiceTrafficDistributionPreferClose || *d == "PreferSameZone") {
		out.PreferClose = true
	}
	return out
}

func protocol(p corev1.Protocol) api.Protocol {
	if p == "" {
		return api.ProtocolTCP
	}
	return api.Protocol(p)
}

// sliceService returns the name of the service an EndpointSlice belongs to,
// or "" for a slice not managed for a service.
func sliceService(es *discoveryv1.EndpointSlice) string {
	return es.Labels[discoveryv1.LabelServiceName]
}

// convertEndpointSlice builds the store form of an EndpointSlice. FQDN slices
// and ports without a number ("all ports") carry nothing the datapath can use
// and are dropped; conditions follow the EndpointSlice API, where a missing
// ready condition means ready and a missing serving condition means the
// value of ready.
func convertEndpointSlice(cluster string, es *discoveryv1.EndpointSlice) (*api.EndpointSlice, error) {
	out := &api.EndpointSlice{
		Cluster:   cluster,
		Namespace: es.Namespace,
		Service:   sliceService(es),
		Name:      es.Name,
	}
	if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
		return out, nil
	}
	for _, p := range es.Ports {
		if p.Port == nil {
			continue
		}
		ep := api.EndpointPort{Port: uint16(*p.Port), Protocol: api.ProtocolTCP}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Protocol != nil {
			ep.Protocol = protocol(*p.Protocol)
		}
		out.Ports = append(out.Ports, ep)
	}
	for i, e := range es.Endpoints {
		ae := api.Endpoint{Ready: true}
		for _, a := range e.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return nil, fmt.Errorf("endpoint slice %s/%s: endpoint #%d: address %q: %w", es.Namespace, es.Name, i, a, err)
			}
			ae.Addresses = append(ae.Addresses, ip.Unmap())
		}
		if len(ae.Addresses) == 0 {
			continue
		}
		if e.Conditions.Ready != nil {
			ae.Ready = *e.Conditions.Ready
		}
		ae.Serving = ae.Ready
		if e.Conditions.Serving != nil {
			ae.Serving = *e.Conditions.Serving
		}
		if e.Conditions.Terminating != nil {
			ae.Terminating = *e.Conditions.Terminating
		}
		if e.NodeName != nil {
			ae.NodeName = *e.NodeName
		}
		if e.Zone != nil {
			ae.Zone = *e.Zone
		}
		if e.Hostname != nil {
			ae.Hostname = *e.Hostname
		}
		out.Endpoints = append(out.Endpoints, ae)
	}
	// Kubernetes does not order endpoints; sorting makes equal content encode
	// to equal bytes, so a reordering is not a store write.
	slices.SortFunc(out.Endpoints, func(a, b api.Endpoint) int { return a.Addresses[0].Compare(b.Addresses[0]) })
	return out, nil
}

// convertNode builds the store form of a Node: its internal IPs (external
// ones when it has none), pod CIDRs and zone.
func convertNode(cluster string, n *corev1.Node) (*api.Node, error) {
	out := &api.Node{Cluster: cluster, Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != typ {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				return nil, fmt.Errorf("node %s: address %q: %w", n.Name, a.Address, err)
			}
			out.Addresses = append(out.Addresses, ip.Unmap())
		}
		if len(out.Addresses) > 0 {
			break
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("node %s: pod CIDR %q: %w", n.Name, c, err)
		}
		out.PodCIDRs = append(out.PodCIDRs, p.Masked())
	}
	return out, nil
}

// withBGP fills the node's BGP speaker fields when the cluster runs BGP: the
// node speaks from its first address (an InternalIP when it has one) with
// the cluster's ASN. The reflector accepts sessions from exactly these
// addresses (bgp.ReflectorPeers).
func withBGP(n *api.Node, asn uint32, on bool) {
	if !on || len(n.Addresses) == 0 {
		return
	}
	n.BGPAddress = n.Addresses[0]
	n.ASN = asn
}

// excludedLabel reports labels that identify one pod, one rollout or one
// placement rather than what the pod is: leaving them in would give every
// pod, rollout or zone its own identity.
func excludedLabel(key string) bool {
	switch key {
	case "pod-template-hash", "controller-revision-hash", "pod-template-generation",
		"statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index",
		"batch.kubernetes.io/controller-uid", "controller-uid", "batch.kubernetes.io/job-completion-index",
		// Copied from the node at binding (PodTopologyLabels admission).
		corev1.LabelTopologyZone, corev1.LabelTopologyRegion:
		return true
	}
	return false
}

// NamespaceLabelPrefix prefixes the namespace's labels in an identity's label
// set, so that policies can select by namespace labels (Cilium's spelling).
const NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."

// identityLabels is the label set an identity is allocated for: the pod's
// labels minus the excluded ones, plus the namespace's labels under
// NamespaceLabelPrefix.
func identityLabels(podLabels, nsLabels map[string]string) map[string]string {
	out := make(map[string]string, len(podLabels)+len(nsLabels))
	for k, v := range podLabels {
		if !excludedLabel(k) {
			out[k] = v
		}
	}
	for k, v := range nsLabels {
		out[NamespaceLabelPrefix+k] = v
	}
	return out
}

// labelsID is a canonical string of a namespace and label set: equal sets give
// equal strings.
func labelsID(namespace string, labels map[string]string) string {
	keys := slices.Sorted(maps.Keys(labels))
	var b strings.Builder
	b.WriteString(namespace)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// podIPs returns the IPs a pod's ipcache entries are for: none for host
// network pods (their IP is the node's), pods without an IP yet, and pods
// that have terminated (their IP may already belong to another pod).
func podIPs(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	raw := make([]string, 0, 2)
	for _, ip := range p.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && p.Status.PodIP != "" {
		raw = append(raw, p.Status.PodIP)
	}
	var out []netip.Addr
	for _, s := range raw {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return cmp.Compare(a.String(), b.String()) })
	return out
}

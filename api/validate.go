package api

import (
	"errors"
	"fmt"
	"net/netip"
)

const (
	// MaxClusterNameLen bounds cluster names: they appear in every key and in
	// certificate common names.
	MaxClusterNameLen = 32
	// DefaultMaxClusterID is the largest cluster ID of a default mesh.
	DefaultMaxClusterID = 255
	// ExtendedMaxClusterID is the largest cluster ID of a mesh configured for
	// 511 clusters, which leaves fewer bits for identities per cluster.
	ExtendedMaxClusterID = 511
)

// Bounds on every count a peer controls. They follow Kubernetes' own limits
// where there is one (an EndpointSlice holds at most 1000 endpoints and 100
// ports, an endpoint at most 100 addresses), so that no legitimate export is
// refused, while one value cannot make an agent allocate without bound or
// hand the datapath a set it refuses.
const (
	MaxEndpointsPerSlice    = 1000
	MaxAddressesPerEndpoint = 100
	MaxPorts                = 100
	MaxAddresses            = 16 // node addresses, service cluster IPs
	MaxPodCIDRs             = 16 // per node and per cluster
	MaxLabels               = 256
	MaxLabelLen             = 317 // a qualified key: 253-byte prefix, '/', 63-byte name
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// ValidateClusterName checks that name is a lower-case DNS label of at most
// MaxClusterNameLen characters.
func ValidateClusterName(name string) error {
	if name == "" {
		return invalidf("cluster name is empty")
	}
	if len(name) > MaxClusterNameLen {
		return invalidf("cluster name %q: %d characters, at most %d allowed", name, len(name), MaxClusterNameLen)
	}
	if !isDNSLabel(name) {
		return invalidf("cluster name %q: must be a lower-case DNS label (a-z, 0-9 and '-', starting and ending with a letter or digit)", name)
	}
	return nil
}

// ValidateMaxClusterID checks the mesh-wide cluster ID limit.
func ValidateMaxClusterID(maxID uint32) error {
	if maxID != DefaultMaxClusterID && maxID != ExtendedMaxClusterID {
		return invalidf("max cluster ID %d: must be %d or %d", maxID, DefaultMaxClusterID, ExtendedMaxClusterID)
	}
	return nil
}

// ValidateClusterID checks that id is within 1..maxID. A maxID of 0 means
// DefaultMaxClusterID.
func ValidateClusterID(id, maxID uint32) error {
	if maxID == 0 {
		maxID = DefaultMaxClusterID
	}
	if err := ValidateMaxClusterID(maxID); err != nil {
		return err
	}
	if id < 1 || id > maxID {
		return invalidf("cluster ID %d: must be within 1..%d", id, maxID)
	}
	return nil
}

// ValidateProtocol checks an L4 protocol name.
func ValidateProtocol(p Protocol) error {
	switch p {
	case ProtocolTCP, ProtocolUDP, ProtocolSCTP:
		return nil
	}
	return invalidf("protocol %q: must be TCP, UDP or SCTP", string(p))
}

// ValidateAffinity checks an affinity; the empty string means AffinityNone.
func ValidateAffinity(a Affinity) error {
	switch a {
	case "", AffinityNone, AffinityLocal, AffinityRemote:
		return nil
	}
	return invalidf("affinity %q: must be local, remote or none", string(a))
}

// The checks below take a describe func so the name of the offending field
// is formatted only when a check fails: validation runs on every write and
// every decode, across every endpoint of a slice.

func validatePort(port uint16, describe func() string) error {
	if port == 0 {
		return invalidf("%s: port 0 is not a valid port", describe())
	}
	return nil
}

func validatePrefix(p netip.Prefix, describe func() string) error {
	if !p.IsValid() {
		return invalidf("%s: invalid CIDR", describe())
	}
	if p.Masked() != p {
		return invalidf("%s %s: host bits set (did you mean %s?)", describe(), p, p.Masked())
	}
	return nil
}

func validateAddr(a netip.Addr, describe func() string) error {
	if !a.IsValid() || a.IsUnspecified() {
		return invalidf("%s: missing or unspecified IP address", describe())
	}
	return nil
}

func validatePorts[P ServicePort | EndpointPort](what string, ports []P) error {
	if len(ports) > MaxPorts {
		return invalidf("%s: %d ports, at most %d", what, len(ports), MaxPorts)
	}
	for i, p := range ports {
		p := ServicePort(p)
		describe := func() string { return fmt.Sprintf("%s: port #%d (%q)", what, i, p.Name) }
		if err := validatePort(p.Port, describe); err != nil {
			return err
		}
		if err := ValidateProtocol(p.Protocol); err != nil {
			return fmt.Errorf("%s: %w", describe(), err)
		}
	}
	return nil
}

// validateName checks a Kubernetes object name used as a key segment: it must
// be non-empty and must not contain '/', which would shift the key layout.
func validateName(what, name string) error {
	if name == "" {
		return invalidf("%s is empty", what)
	}
	if len(name) > 253 {
		return invalidf("%s %q: longer than 253 characters", what, name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '/' || c < 0x21 || c > 0x7e {
			return invalidf("%s %q: character %q not allowed", what, name, c)
		}
	}
	return nil
}

func isDNSLabel(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// Validate checks the cluster config.
func (c *Cluster) Validate() error {
	if err := ValidateClusterName(c.Name); err != nil {
		return err
	}
	if err := ValidateClusterID(c.ID, c.MaxClusterID); err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	if err := validateCount("cluster "+c.Name+": pod CIDRs", len(c.PodCIDRs), MaxPodCIDRs); err != nil {
		return err
	}
	for i, p := range c.PodCIDRs {
		if err := validatePrefix(p, func() string { return fmt.Sprintf("cluster %s: pod CIDR #%d", c.Name, i) }); err != nil {
			return err
		}
		for _, q := range c.PodCIDRs[:i] {
			if p.Overlaps(q) {
				return invalidf("cluster %s: pod CIDRs %s and %s overlap", c.Name, q, p)
			}
		}
	}
	return nil
}

// Validate checks the node.
func (n *Node) Validate() error {
	if err := ValidateClusterName(n.Cluster); err != nil {
		return err
	}
	if err := validateName("node name", n.Name); err != nil {
		return fmt.Errorf("cluster %s: %w", n.Cluster, err)
	}
	what := fmt.Sprintf("node %s/%s", n.Cluster, n.Name)
	if err := validateCount(what+": addresses", len(n.Addresses), MaxAddresses); err != nil {
		return err
	}
	if err := validateCount(what+": pod CIDRs", len(n.PodCIDRs), MaxPodCIDRs); err != nil {
		return err
	}
	for i, a := range n.Addresses {
		if err := validateAddr(a, func() string { return fmt.Sprintf("%s: address #%d", what, i) }); err != nil {
			return err
		}
	}
	for i, p := range n.PodCIDRs {
		if err := validatePrefix(p, func() string { return fmt.Sprintf("%s: pod CIDR #%d", what, i) }); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the service.
func (s *Service) Validate() error {
	if err := ValidateClusterName(s.Cluster); err != nil {
		return err
	}
	if err := validateName("service namespace", s.Namespace); err != nil {
		return fmt.Errorf("cluster %s: %w", s.Cluster, err)
	}
	if err := validateName("service name", s.Name); err != nil {
		return fmt.Errorf("cluster %s: %w", s.Cluster, err)
	}
	what := fmt.Sprintf("service %s/%s/%s", s.Cluster, s.Namespace, s.Name)
	if err := validateCount(what+": cluster IPs", len(s.ClusterIPs), MaxAddresses); err != nil {
		return err
	}
	if err := validateLabels(what, s.Labels); err != nil {
		return err
	}
	if err := ValidateAffinity(s.Affinity); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for i, a := range s.ClusterIPs {
		if err := validateAddr(a, func() string { return fmt.Sprintf("%s: cluster IP #%d", what, i) }); err != nil {
			return err
		}
	}
	if err := validateCount(what+": clusterset IPs", len(s.ClusterSetIPs), MaxAddresses); err != nil {
		return err
	}
	for i, a := range s.ClusterSetIPs {
		if err := validateAddr(a, func() string { return fmt.Sprintf("%s: clusterset IP #%d", what, i) }); err != nil {
			return err
		}
	}
	if s.Headless && len(s.ClusterIPs) > 0 {
		return invalidf("%s: headless with %d cluster IPs", what, len(s.ClusterIPs))
	}
	if !s.ServiceExport && !s.ExportCreated.IsZero() {
		return invalidf("%s: export creation time without a ServiceExport", what)
	}
	return validatePorts(what, s.Ports)
}

// Validate checks the endpoint slice.
func (e *EndpointSlice) Validate() error {
	if err := ValidateClusterName(e.Cluster); err != nil {
		return err
	}
	for _, f := range []struct{ what, v string }{
		{"endpoint slice namespace", e.Namespace},
		{"endpoint slice service", e.Service},
		{"endpoint slice name", e.Name},
	} {
		if err := validateName(f.what, f.v); err != nil {
			return fmt.Errorf("cluster %s: %w", e.Cluster, err)
		}
	}
	what := fmt.Sprintf("endpoint slice %s/%s/%s/%s", e.Cluster, e.Namespace, e.Service, e.Name)
	if err := validatePorts(what, e.Ports); err != nil {
		return err
	}
	if err := validateCount(what+": endpoints", len(e.Endpoints), MaxEndpointsPerSlice); err != nil {
		return err
	}
	for i, ep := range e.Endpoints {
		if len(ep.Addresses) == 0 {
			return invalidf("%s: endpoint #%d has no address", what, i)
		}
		// Checked inline: the description is formatted only on failure, as
		// this runs for every endpoint of every slice read.
		if len(ep.Addresses) > MaxAddressesPerEndpoint {
			return invalidf("%s: endpoint #%d: addresses: %d, at most %d", what, i, len(ep.Addresses), MaxAddressesPerEndpoint)
		}
		if ep.Hostname != "" && (len(ep.Hostname) > 63 || !isDNSLabel(ep.Hostname)) {
			return invalidf("%s: endpoint #%d: hostname %q: not a DNS label", what, i, ep.Hostname)
		}
		for j, a := range ep.Addresses {
			if err := validateAddr(a, func() string { return fmt.Sprintf("%s: endpoint #%d address #%d", what, i, j) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// Validate checks the identity.
func (i *Identity) Validate() error {
	if err := ValidateClusterName(i.Cluster); err != nil {
		return err
	}
	if i.ID == 0 {
		return invalidf("identity in cluster %s: ID 0 is reserved", i.Cluster)
	}
	if err := validateName("identity namespace", i.Namespace); err != nil {
		return fmt.Errorf("identity %s/%d: %w", i.Cluster, i.ID, err)
	}
	if err := validateLabels(fmt.Sprintf("identity %s/%d", i.Cluster, i.ID), i.Labels); err != nil {
		return err
	}
	return nil
}

// Validate checks the ipcache entry.
func (e *IPCacheEntry) Validate() error {
	if err := ValidateClusterName(e.Cluster); err != nil {
		return err
	}
	if err := validateAddr(e.IP, func() string { return fmt.Sprintf("ipcache entry in cluster %s: IP", e.Cluster) }); err != nil {
		return err
	}
	if e.Identity == 0 {
		return invalidf("ipcache entry %s/%s: identity 0 is reserved", e.Cluster, e.IP)
	}
	return nil
}

// validateCount checks one peer-controlled count against its bound.
func validateCount(what string, n, max int) error {
	if n > max {
		return invalidf("%s: %d, at most %d", what, n, max)
	}
	return nil
}

// validateLabels bounds a label map.
func validateLabels(what string, labels map[string]string) error {
	if err := validateCount(what+": labels", len(labels), MaxLabels); err != nil {
		return err
	}
	for k, v := range labels {
		if len(k) == 0 || len(k) > MaxLabelLen || len(v) > MaxLabelLen {
			return invalidf("%s: label %.40q: key or value empty or longer than %d bytes", what, k, MaxLabelLen)
		}
	}
	return nil
}

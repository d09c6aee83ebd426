package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	api "github.com/osrg/gobgp/v3/api"

	cmapi "github.com/clustermesh/clustermesh/api"
)

// RefusedImportPolicy: the route is not one of a registry cluster's pod
// CIDRs announced with one of that cluster's node addresses as next hop
// (see ImportRule). Default routes, other clusters' ranges and the local
// pod CIDRs announced by a peer all fall here.
const RefusedImportPolicy RefusalReason = "outside-cluster-pod-cidrs"

// ImportRule says which routes one cluster's nodes may originate: a prefix
// inside one of PodCIDRs, no more specific than its MaxLen (the cluster's
// node pod CIDR length), with one of NextHops (the cluster's node
// addresses) as next hop. Routes reflected through other speakers keep their
// originating node as next hop, so the next hop names the cluster whatever
// neighbor relayed the route.
type ImportRule struct {
	Cluster  string
	PodCIDRs []ImportPrefix
	NextHops []netip.Addr
}

// ImportPrefix is one accepted pod CIDR and the longest prefix length
// accepted inside it.
type ImportPrefix struct {
	Prefix netip.Prefix
	MaxLen int
}

// ImportRules derives the import rules from the registry: every accepted
// cluster's pod CIDRs (api.Cluster.PodCIDRs), each up to the longest pod
// CIDR a node of that cluster holds inside it, and the addresses of the
// cluster's nodes. A default route is never a pod CIDR; a cluster without
// nodes gets no rule, so nothing it announces is accepted.
func ImportRules(clusters []cmapi.Cluster, nodes []cmapi.Node) []ImportRule {
	byCluster := map[string][]cmapi.Node{}
	for _, n := range nodes {
		byCluster[n.Cluster] = append(byCluster[n.Cluster], n)
	}
	var out []ImportRule
	for _, c := range clusters {
		r := ImportRule{Cluster: c.Name}
		seen := map[netip.Addr]bool{}
		for _, n := range byCluster[c.Name] {
			for _, a := range n.Addresses {
				if a = a.Unmap(); a.IsValid() && !a.IsUnspecified() && !seen[a] {
					seen[a] = true
					r.NextHops = append(r.NextHops, a)
				}
			}
		}
		for _, cidr := range c.PodCIDRs {
			if !cidr.IsValid() || cidr.Bits() == 0 {
				continue
			}
			cidr = cidr.Masked()
			ip := ImportPrefix{Prefix: cidr, MaxLen: cidr.Bits()}
			for _, n := range byCluster[c.Name] {
				for _, p := range n.PodCIDRs {
					if p.IsValid() && p.Addr().Is4() == cidr.Addr().Is4() && p.Bits() >= cidr.Bits() && cidr.Contains(p.Addr()) {
						ip.MaxLen = max(ip.MaxLen, p.Bits())
					}
				}
			}
			r.PodCIDRs = append(r.PodCIDRs, ip)
		}
		if len(r.NextHops) == 0 || len(r.PodCIDRs) == 0 {
			continue
		}
		slices.SortFunc(r.NextHops, func(a, b netip.Addr) int { return a.Compare(b) })
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cluster < out[j].Cluster })
	return out
}

// importPolicyName prefixes the GoBGP objects of the import policy; each
// update creates a new generation and deletes the previous one.
const importPolicyName = "clustermesh-import"

// setImportPolicy records rules and, once GoBGP runs, enforces them.
func (c *core) setImportPolicy(ctx context.Context, rules []ImportRule) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.importSet && slices.EqualFunc(c.imports, rules, ruleEqual) {
		return nil
	}
	c.imports = slices.Clone(rules)
	c.importSet = true
	if c.srv == nil {
		return nil // start applies them
	}
	return c.applyImportPolicyLocked(ctx)
}

func ruleEqual(a, b ImportRule) bool {
	return a.Cluster == b.Cluster && slices.Equal(a.PodCIDRs, b.PodCIDRs) && slices.Equal(a.NextHops, b.NextHops)
}

// applyImportPolicyLocked installs the rules as GoBGP's global import
// policy: one statement per cluster and address family (prefix set with
// the accepted lengths, next hop in the cluster's node addresses) that
// accepts, and a default that rejects everything else. GoBGP assigns
// per-neighbor policies to route-server clients only, hence one global
// policy keyed by next hop. The new generation replaces the old one in a
// single assignment change, then every neighbor's received routes are run
// through it again (soft reset in), so routes the new rules refuse are
// withdrawn and routes they now accept are installed. c.mu must be held.
func (c *core) applyImportPolicyLocked(ctx context.Context) error {
	c.importGen++
	name := fmt.Sprintf("%s-%d", importPolicyName, c.importGen)
	// GoBGP runs locally originated paths (Announce) through the global
	// import policy too, and a path refused there is withdrawn and never
	// judged again: a node whose own pod CIDR was not yet in the registry
	// when it announced would stay silent. What a node announces is its own
	// business (Announce); the rules are for what peers send.
	pol := &api.Policy{Name: name, Statements: []*api.Statement{{
		Name:       name + "-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
	}}}
	var sets []*api.DefinedSet
	for _, r := range c.imports {
		for _, v4 := range []bool{true, false} {
			set := &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: fmt.Sprintf("%s-%s-v%d", name, r.Cluster, map[bool]int{true: 4, false: 6}[v4])}
			for _, p := range r.PodCIDRs {
				if p.Prefix.Addr().Is4() == v4 {
					set.Prefixes = append(set.Prefixes, &api.Prefix{IpPrefix: p.Prefix.String(), MaskLengthMin: uint32(p.Prefix.Bits()), MaskLengthMax: uint32(p.MaxLen)})
				}
			}
			// Speakers announce a pod CIDR with the node address of its
			// family as next hop (over either session family).
			var hops []string
			for _, a := range r.NextHops {
				if a.Is4() == v4 {
					hops = append(hops, hostPrefix(a))
				}
			}
			// A statement without a next-hop condition would accept from
			// anyone: never emit one.
			if len(set.Prefixes) == 0 || len(hops) == 0 {
				continue
			}
			sets = append(sets, set)
			pol.Statements = append(pol.Statements, &api.Statement{
				Name: set.Name,
				Conditions: &api.Conditions{
					PrefixSet:     &api.MatchSet{Type: api.MatchSet_ANY, Name: set.Name},
					NextHopInList: hops,
				},
				Actions: &api.Actions{RouteAction: api.RouteAction_ACCEPT},
			})
		}
	}
	for _, s := range sets {
		if err := c.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: s}); err != nil {
			return fmt.Errorf("%s: import policy: add prefix set %s: %w", c.cfg.Name, s.Name, err)
		}
	}
	if err := c.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
		return fmt.Errorf("%s: import policy: add policy %s: %w", c.cfg.Name, name, err)
	}
	assign := &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_IMPORT,
		Policies: []*api.Policy{{Name: name}}, DefaultAction: api.RouteAction_REJECT,
	}
	var err error
	if c.importGen == 1 {
		err = c.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: assign})
	} else {
		err = c.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: assign})
	}
	if err != nil {
		return fmt.Errorf("%s: import policy: assign %s: %w", c.cfg.Name, name, err)
	}
	for _, old := range c.importObjs {
		c.deleteImportObjects(ctx, old)
	}
	c.importObjs = []importObjects{{policy: name, sets: sets}}
	if len(c.peers) > 0 {
		if err := c.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: "all", Soft: true, Direction: api.ResetPeerRequest_IN}); err != nil {
			return fmt.Errorf("%s: import policy: re-apply to received routes: %w", c.cfg.Name, err)
		}
	}
	c.log.Info("bgp import policy applied", "node", c.cfg.Name, "policy", name, "clusters", len(c.imports), "statements", len(pol.Statements))
	return nil
}

// importObjects are the GoBGP objects of one policy generation.
type importObjects struct {
	policy string
	sets   []*api.DefinedSet
}

func (c *core) deleteImportObjects(ctx context.Context, o importObjects) {
	if err := c.srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: o.policy}, All: true}); err != nil {
		c.log.Warn("bgp: delete old import policy", "node", c.cfg.Name, "policy", o.policy, "error", err)
		return
	}
	for _, s := range o.sets {
		if err := c.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{DefinedType: s.DefinedType, Name: s.Name}, All: true}); err != nil {
			c.log.Warn("bgp: delete old import prefix set", "node", c.cfg.Name, "set", s.Name, "error", err)
		}
	}
}

// importRefusals lists the received routes the import policy refuses, per
// neighbor, as GoBGP judges them (its adj-RIB-in with the import policy
// applied). Nil while no policy is set.
func (c *core) importRefusals(ctx context.Context) ([]Refusal, error) {
	c.mu.Lock()
	set := c.importSet
	peers := make([]Peer, 0, len(c.peers))
	for _, p := range c.peers {
		peers = append(peers, p)
	}
	c.mu.Unlock()
	if !set {
		return nil, nil
	}
	var out []Refusal
	for _, p := range peers {
		for _, f := range []*api.Family{familyV4, familyV6} {
			err := c.srv.ListPath(ctx, &api.ListPathRequest{
				TableType: api.TableType_ADJ_IN, Name: p.Address.String(), Family: f, EnableFiltered: true,
			}, func(d *api.Destination) {
				for _, path := range d.Paths {
					if !path.Filtered {
						continue
					}
					if ev, ok := decodePath(path); ok {
						out = append(out, Refusal{Prefix: ev.prefix, NextHop: ev.nextHop, Peer: p.Address.String(), Reason: RefusedImportPolicy})
					}
				}
			})
			if err != nil {
				return nil, fmt.Errorf("%s: list routes received from %s: %w", c.cfg.Name, p, err)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Peer != out[j].Peer {
			return out[i].Peer < out[j].Peer
		}
		return out[i].Prefix.String() < out[j].Prefix.String()
	})
	return out, nil
}

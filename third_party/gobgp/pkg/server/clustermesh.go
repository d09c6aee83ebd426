// Copyright (C) 2026 clustermesh authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//    http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
// implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// This file is not part of GoBGP: it holds the clustermesh patches (see
// PATCHES.md at the root of this tree).

package server

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/dgryski/go-farm"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/internal/pkg/table"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// outgoingBatch collects, while one propagateUpdate call runs, the paths
// each peer is to receive and the best-path changes to report, so that a
// peer gets them in one fsmOutgoingMsg, which its writer packs into as few
// UPDATE messages as the attributes allow, instead of one message (one
// UPDATE, one write) per path. (Patch 1.)
type outgoingBatch struct {
	peers []*peer // in the order of their first path
	paths map[*peer][]*table.Path
	best  []*table.Path
	memos map[*peer]*table.AttrsMemo // patch 5
}

// startOutgoingBatch starts collecting outgoing paths, unless a batch is
// already open (propagateUpdate is not re-entered today, but a nested call
// then joins the outer batch). The returned function sends the batch.
func (s *BgpServer) startOutgoingBatch() func() {
	if s.outBatch != nil {
		return func() {}
	}
	s.outBatch = &outgoingBatch{paths: make(map[*peer][]*table.Path), memos: make(map[*peer]*table.AttrsMemo)}
	return s.flushOutgoingBatch
}

// sendOutgoing queues paths for peer in the open batch, or sends them at
// once without one.
func (s *BgpServer) sendOutgoing(peer *peer, paths []*table.Path) {
	b := s.outBatch
	if b == nil {
		sendfsmOutgoingMsg(peer, paths, nil, false)
		return
	}
	if _, ok := b.paths[peer]; !ok {
		b.peers = append(b.peers, peer)
	}
	b.paths[peer] = append(b.paths[peer], paths...)
}

// notifyBest reports best-path changes: with a batch open they go out in
// one event at its end. Multipath and zebra rely on one destination per
// event, so they are reported at once as before.
func (s *BgpServer) notifyBest(best []*table.Path, multipath [][]*table.Path) {
	if s.outBatch == nil || len(multipath) > 0 || table.UseMultiplePaths.Enabled || s.zclient != nil {
		s.notifyBestWatcher(best, multipath)
		return
	}
	s.outBatch.best = append(s.outBatch.best, best...)
}

func (s *BgpServer) flushOutgoingBatch() {
	b := s.outBatch
	s.outBatch = nil
	for _, p := range b.peers {
		sendfsmOutgoingMsg(p, lastChangePerRoute(b.paths[p]), nil, false)
	}
	if len(b.best) > 0 {
		s.notifyBestWatcher(b.best, nil)
	}
}

// updatePathAttrs is table.UpdatePathAttrs for a path going to peer,
// remembered for the rest of the open batch (patch 5). peer.fsm.lock is
// held for reading.
func (s *BgpServer) updatePathAttrs(peer *peer, path *table.Path) *table.Path {
	var m *table.AttrsMemo
	if b := s.outBatch; b != nil {
		if m = b.memos[peer]; m == nil {
			m = table.NewAttrsMemo()
			b.memos[peer] = m
		}
	}
	return m.UpdatePathAttrs(peer.fsm.logger, peer.fsm.gConf, peer.fsm.pConf, peer.fsm.peerInfo, path)
}

// lastChangePerRoute keeps, of several changes to one route (NLRI and
// path identifier) in paths, only the last one: the packer sends
// withdrawals first and groups announcements by attributes, which would
// otherwise reorder them.
func lastChangePerRoute(paths []*table.Path) []*table.Path {
	if len(paths) < 2 {
		return paths
	}
	last := make(map[routeKey]int, len(paths))
	for i, p := range paths {
		if !p.IsEOR() {
			last[keyOfRoute(p)] = i
		}
	}
	if len(last) == len(paths) {
		return paths // no route twice (the common case)
	}
	out := make([]*table.Path, 0, len(last))
	for i, p := range paths {
		if p.IsEOR() || last[keyOfRoute(p)] == i {
			out = append(out, p)
		}
	}
	return out
}

// routeKey names a route: IP prefixes by value, other NLRI by their text.
type routeKey struct {
	id     uint32
	family bgp.RouteFamily
	prefix netip.Prefix
	other  string
}

func keyOfRoute(p *table.Path) routeKey {
	k := routeKey{id: p.GetNlri().PathLocalIdentifier(), family: p.GetRouteFamily()}
	var ip []byte
	var bits uint8
	switch n := p.GetNlri().(type) {
	case *bgp.IPAddrPrefix:
		ip, bits = n.Prefix, n.Length
	case *bgp.IPv6AddrPrefix:
		ip, bits = n.Prefix, n.Length
	}
	if a, ok := netip.AddrFromSlice(ip); ok {
		k.prefix = netip.PrefixFrom(a.Unmap(), int(bits))
		return k
	}
	k.other = p.GetNlri().String()
	return k
}

// AddPathList is the embedded counterpart of the gRPC AddPathStream: every
// path of r (an announcement, or a withdrawal with IsWithdraw set) enters
// the table in one management operation and one propagateUpdate, so peers
// receive them packed (patch 1). Unlike AddPath it records no UUIDs;
// withdraw the paths with AddPathList or DeletePath. Nothing is added if a
// path is invalid. (Patch 2.)
func (s *BgpServer) AddPathList(ctx context.Context, r *api.AddPathStreamRequest) error {
	if r == nil {
		return fmt.Errorf("nil request")
	}
	if r.TableType != api.TableType_GLOBAL && r.TableType != api.TableType_VRF {
		return fmt.Errorf("unsupported resource: %s", r.TableType)
	}
	return s.mgmtOperation(func() error {
		pathList := make([]*table.Path, 0, len(r.Paths))
		for _, apiPath := range r.Paths {
			path, err := api2Path(r.TableType, apiPath, apiPath.IsWithdraw)
			if err != nil {
				return err
			}
			pathList = append(pathList, path)
		}
		if len(s.uuidMap) > 0 { // paths added by AddPath
			for _, path := range pathList {
				if path.IsWithdraw {
					delete(s.uuidMap, pathTokey(path))
				}
			}
		}
		return s.addPathList(r.VrfId, pathList)
	}, true)
}

// RouteEvent is what WatchRoutes reports: best-path changes of the global
// table, or a peer's session state change, in plain Go values. (Patch 3.)
type RouteEvent struct {
	// Paths are best-path changes; nil for a peer event.
	Paths []RoutePath
	// Peer is the neighbor whose session state changed, and Established
	// its new state (for a peer event).
	Peer        netip.Addr
	Established bool
}

// RoutePath is one best-path change of an IPv4 or IPv6 unicast prefix.
type RoutePath struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// Neighbor is the peer the path came from; invalid for a locally
	// originated path.
	Neighbor netip.Addr
	Withdraw bool
}

// WatchRoutes is WatchEvent with the peer-state filter and, with
// bestPaths, the BEST filter (with the current best paths first), minus
// the conversion of every path to the API's protobuf form, which was most
// of a receiving speaker's cost (and then ours to decode it again). fn is
// called from one goroutine, in GoBGP's order of events, until ctx is done.
// Paths of other families are left out. (Patch 3.)
func (s *BgpServer) WatchRoutes(ctx context.Context, bestPaths bool, fn func(RouteEvent)) error {
	opts := []watchOption{watchPeer()}
	if bestPaths {
		opts = append(opts, watchBestPath(true))
	}
	w := s.watch(opts...)
	go func() {
		defer w.Stop()
		for {
			select {
			case ev := <-w.Event():
				switch msg := ev.(type) {
				case *watchEventBestPath:
					paths := msg.PathList
					if len(msg.MultiPathList) > 0 {
						paths = nil
						for _, p := range msg.MultiPathList {
							paths = append(paths, p...)
						}
					}
					out := make([]RoutePath, 0, len(paths))
					for _, p := range paths {
						if r, ok := routePath(p); ok {
							out = append(out, r)
						}
					}
					if len(out) > 0 {
						fn(RouteEvent{Paths: out})
					}
				case *watchEventPeer:
					if msg.Type != PEER_EVENT_STATE {
						continue
					}
					if a, ok := netip.AddrFromSlice(msg.PeerAddress); ok {
						fn(RouteEvent{Peer: a.Unmap(), Established: msg.State == bgp.BGP_FSM_ESTABLISHED})
					}
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return nil
}

func routePath(p *table.Path) (RoutePath, bool) {
	var ip []byte
	var bits uint8
	switch n := p.GetNlri().(type) {
	case *bgp.IPAddrPrefix:
		ip, bits = n.Prefix, n.Length
	case *bgp.IPv6AddrPrefix:
		ip, bits = n.Prefix, n.Length
	default:
		return RoutePath{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return RoutePath{}, false
	}
	prefix, err := a.Unmap().Prefix(int(bits))
	if err != nil {
		return RoutePath{}, false
	}
	r := RoutePath{Prefix: prefix, Withdraw: p.IsWithdraw}
	if nh, ok := netip.AddrFromSlice(p.GetNexthop()); ok {
		r.NextHop = nh.Unmap()
	}
	if src := p.GetSource(); src != nil {
		if nb, ok := netip.AddrFromSlice(src.Address); ok {
			r.Neighbor = nb.Unmap()
		}
	}
	return r, true
}

// AddPrefixes announces prefixes (or withdraws them, with withdraw set) as
// originated here: origin IGP, next hop nextHop4 or nextHop6 by family, in
// one management operation and one propagateUpdate, like AddPathList. It
// builds GoBGP's paths directly from the prefixes instead of through the
// API's protobuf form, which AddPathList marshals into an Any per attribute
// and api2Path unmarshals again: on an origin announcing 1,000 prefixes
// that round trip was more than half of the call. The paths are the ones
// api2Path makes from the equivalent api.Path (same NLRI, attributes in the
// same order, same attribute hash), and the IPv4 ones share one attribute
// list, as the paths of one received UPDATE do. Nothing is added if a
// prefix is invalid or its family has no next hop. (Patch 4.)
func (s *BgpServer) AddPrefixes(ctx context.Context, prefixes []netip.Prefix, nextHop4, nextHop6 netip.Addr, withdraw bool) error {
	paths, err := originPaths(prefixes, nextHop4, nextHop6, withdraw)
	if err != nil {
		return err
	}
	return s.mgmtOperation(func() error {
		if withdraw && len(s.uuidMap) > 0 { // paths added by AddPath
			for _, path := range paths {
				delete(s.uuidMap, pathTokey(path))
			}
		}
		return s.addPathList("", paths)
	}, true)
}

// originPaths builds AddPrefixes' paths.
func originPaths(prefixes []netip.Prefix, nextHop4, nextHop6 netip.Addr, withdraw bool) ([]*table.Path, error) {
	origin := bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)
	// api2Path hashes the serialized attributes other than MP_REACH_NLRI:
	// the origin and, for IPv4, the next hop, the same for every path.
	hashOf := func(attrs ...bgp.PathAttributeInterface) (uint32, error) {
		var buf []byte
		for _, a := range attrs {
			b, err := a.Serialize()
			if err != nil {
				return 0, err
			}
			buf = append(buf, b...)
		}
		return farm.Hash32(buf), nil
	}
	var attrs4 []bgp.PathAttributeInterface
	var hash4, hash6 uint32
	if nextHop4.IsValid() {
		if !nextHop4.Is4() {
			return nil, fmt.Errorf("IPv4 next hop %s is not an IPv4 address", nextHop4)
		}
		attrs4 = []bgp.PathAttributeInterface{origin, bgp.NewPathAttributeNextHop(nextHop4.String())}
		h, err := hashOf(attrs4...)
		if err != nil {
			return nil, err
		}
		hash4 = h
	}
	if nextHop6.IsValid() {
		if !nextHop6.Is6() || nextHop6.Is4In6() {
			return nil, fmt.Errorf("IPv6 next hop %s is not an IPv6 address", nextHop6)
		}
		h, err := hashOf(origin)
		if err != nil {
			return nil, err
		}
		hash6 = h
	}
	now := time.Now()
	paths := make([]*table.Path, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || p.Addr().Is4In6() {
			return nil, fmt.Errorf("invalid prefix %s", p)
		}
		p = p.Masked()
		var path *table.Path
		switch {
		case p.Addr().Is4() && attrs4 != nil:
			path = table.NewPath(nil, bgp.NewIPAddrPrefix(uint8(p.Bits()), p.Addr().String()), withdraw, attrs4, now, false)
			if !withdraw {
				path.SetHash(hash4)
			}
		case p.Addr().Is6() && nextHop6.IsValid():
			nlri := bgp.NewIPv6AddrPrefix(uint8(p.Bits()), p.Addr().String())
			attrs := []bgp.PathAttributeInterface{origin, bgp.NewPathAttributeMpReachNLRI(nextHop6.String(), []bgp.AddrPrefixInterface{nlri})}
			path = table.NewPath(nil, nlri, withdraw, attrs, now, false)
			if !withdraw {
				path.SetHash(hash6)
			}
		default:
			return nil, fmt.Errorf("prefix %s: no next hop of its family", p)
		}
		paths = append(paths, path)
	}
	return paths, nil
}

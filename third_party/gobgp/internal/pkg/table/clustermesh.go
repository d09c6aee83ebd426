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

// This file is not part of GoBGP: it holds a clustermesh patch (see
// PATCHES.md at the root of this tree).

package table

import (
	"slices"

	"github.com/osrg/gobgp/v3/pkg/config/oc"
	"github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// AttrsMemo remembers, for one peer during one outgoing batch, what
// UpdatePathAttrs did to each attribute list it was given, so that the
// other paths of that list get the same result without recomputing it.
// The paths of one received UPDATE share one attribute list, and a route
// reflector hands every client each of them: UpdatePathAttrs then built the
// same ORIGINATOR_ID, CLUSTER_LIST, LOCAL_PREF and AS_PATH once per path
// and client, about a third of a reflector's CPU while it relayed 10,000
// prefixes. (Patch 5.)
//
// A memo is valid while the peer's configuration and the server's do not
// change: the outgoing batch it lives in ends before any management
// operation can change them.
type AttrsMemo struct {
	edits map[attrsKey]attrsEdit
}

// attrsKey names what UpdatePathAttrs' change depends on besides the
// peer: the attribute list (by identity: attribute values are never
// changed in place, paths only replace them) and the source (IsLocal, the
// originator). A withdrawal gets the same change as an announcement.
type attrsKey struct {
	attrs  *bgp.PathAttributeInterface
	n      int
	source *PeerInfo
}

// attrsEdit is UpdatePathAttrs' change to a clone of the path: the
// attributes it set and the types it deleted.
type attrsEdit struct {
	set  []bgp.PathAttributeInterface
	dels []bgp.BGPAttrType
}

// NewAttrsMemo returns an empty memo.
func NewAttrsMemo() *AttrsMemo {
	return &AttrsMemo{edits: make(map[attrsKey]attrsEdit)}
}

// UpdatePathAttrs is UpdatePathAttrs remembered in m (nil: not
// remembered). Only IPv4 unicast paths whose attributes are all their
// root's (no clone in their chain set or deleted one) are remembered: the
// others (IPv6 paths carry their NLRI in MP_REACH_NLRI, one list per path)
// would only fill the memo.
func (m *AttrsMemo) UpdatePathAttrs(logger log.Logger, global *oc.Global, peer *oc.Neighbor, info *PeerInfo, original *Path) *Path {
	if m == nil || peer.RouteServer.Config.RouteServerClient {
		return UpdatePathAttrs(logger, global, peer, info, original)
	}
	key, ok := memoKey(original)
	if !ok {
		return UpdatePathAttrs(logger, global, peer, info, original)
	}
	if e, ok := m.edits[key]; ok {
		path := original.Clone(original.IsWithdraw)
		// Copies: later steps (export policy aside, which clones)
		// change a path's own lists in place.
		path.pathAttrs = slices.Clone(e.set)
		path.dels = slices.Clone(e.dels)
		return path
	}
	path := UpdatePathAttrs(logger, global, peer, info, original)
	if path.parent != original {
		return path
	}
	m.edits[key] = attrsEdit{set: slices.Clone(path.pathAttrs), dels: slices.Clone(path.dels)}
	return path
}

// memoKey returns p's key, and false if p is not remembered.
func memoKey(p *Path) (attrsKey, bool) {
	if p.IsEOR() || p.GetRouteFamily() != bgp.RF_IPv4_UC {
		return attrsKey{}, false
	}
	r := p
	for ; r.parent != nil; r = r.parent {
		if len(r.pathAttrs) > 0 || len(r.dels) > 0 {
			return attrsKey{}, false
		}
	}
	if len(r.pathAttrs) == 0 || len(r.dels) > 0 {
		return attrsKey{}, false
	}
	return attrsKey{attrs: &r.pathAttrs[0], n: len(r.pathAttrs), source: r.info.source}, true
}

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
}

// startOutgoingBatch starts collecting outgoing paths, unless a batch is
// already open (propagateUpdate is not re-entered today, but a nested call
// then joins the outer batch). The returned function sends the batch.
func (s *BgpServer) startOutgoingBatch() func() {
	if s.outBatch != nil {
		return func() {}
	}
	s.outBatch = &outgoingBatch{paths: make(map[*peer][]*table.Path)}
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

// lastChangePerRoute keeps, of several changes to one route (NLRI and
// path identifier) in paths, only the last one: the packer sends
// withdrawals first and groups announcements by attributes, which would
// otherwise reorder them.
func lastChangePerRoute(paths []*table.Path) []*table.Path {
	if len(paths) < 2 {
		return paths
	}
	type key struct {
		id     uint32
		family bgp.RouteFamily
		prefix string
	}
	last := make(map[key]int, len(paths))
	for i, p := range paths {
		if p.IsEOR() {
			continue
		}
		last[key{p.GetNlri().PathLocalIdentifier(), p.GetRouteFamily(), p.GetNlri().String()}] = i
	}
	if len(last) == len(paths) {
		return paths // no route twice (the common case)
	}
	out := make([]*table.Path, 0, len(last))
	for i, p := range paths {
		if p.IsEOR() || last[key{p.GetNlri().PathLocalIdentifier(), p.GetRouteFamily(), p.GetNlri().String()}] == i {
			out = append(out, p)
		}
	}
	return out
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

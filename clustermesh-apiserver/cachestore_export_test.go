package apiserver

import "github.com/clustermesh/clustermesh/kvstore"

// MeshCacheStore is the client the mesh cache writes its copies with, once
// it runs (nil before, or without the cache): for tests.
func (s *Server) MeshCacheStore() *kvstore.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cacheStore
}

package kvstore

import (
	"context"
	"slices"
	"strings"
	"sync"
)

// Shared hands out one client per store to every user with the same
// connection settings, and closes it when the last one releases it: an
// agent that follows several clusters through one store (the mesh cache,
// see package meshcache) holds one connection to it, not one per cluster.
// etcd multiplexes every watch over that connection.
//
// The cluster ID pin is not part of the identity of a connection: users
// sharing a client check their own pin (ClusterConfigPinned).
type Shared struct {
	mu      sync.Mutex
	clients map[string]*sharedClient
}

type sharedClient struct {
	// ready is closed once the dial ended; cli or err is set then.
	ready chan struct{}
	cli   *Client
	err   error
	refs  int
}

// NewShared returns an empty set of shared clients.
func NewShared() *Shared { return &Shared{clients: map[string]*sharedClient{}} }

func sharedKey(cfg Config) string {
	eps := slices.Clone(cfg.Endpoints)
	slices.Sort(eps)
	return strings.Join([]string{strings.Join(eps, ","), cfg.CAFile, cfg.CertFile, cfg.KeyFile, cfg.ServerName,
		string(cfg.CA), string(cfg.Cert)}, "\x00")
}

// Get returns the client for cfg, connecting if no user holds one, and
// the function that releases it. The caller must not Close the client.
// Users asking while the first one dials wait for that dial (and share its
// failure) rather than dialing again.
func (s *Shared) Get(ctx context.Context, cfg Config) (*Client, func(), error) {
	key := sharedKey(cfg)
	s.mu.Lock()
	sc := s.clients[key]
	if sc == nil {
		sc = &sharedClient{ready: make(chan struct{})}
		s.clients[key] = sc
		s.mu.Unlock()
		cfg.ClusterID = 0
		sc.cli, sc.err = New(ctx, cfg)
		s.mu.Lock()
		if sc.err != nil {
			delete(s.clients, key)
		}
		close(sc.ready)
	}
	sc.refs++
	s.mu.Unlock()
	select {
	case <-sc.ready:
	case <-ctx.Done():
		s.release(key, sc)
		return nil, nil, ctx.Err()
	}
	if sc.err != nil {
		s.release(key, sc)
		return nil, nil, sc.err
	}
	var once sync.Once
	return sc.cli, func() { once.Do(func() { s.release(key, sc) }) }, nil
}

func (s *Shared) release(key string, sc *sharedClient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.refs--
	if sc.refs == 0 {
		if s.clients[key] == sc {
			delete(s.clients, key)
		}
		if sc.cli != nil {
			_ = sc.cli.Close()
		}
	}
}

// Len is the number of open shared clients.
func (s *Shared) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

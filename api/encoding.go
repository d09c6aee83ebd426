package api

import (
	"encoding/json"
	"fmt"
)

// PLACEHOLDER: JSON until the compact encoding lands; the signatures are the
// contract.

func marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Marshal encodes the cluster config.
func (c *Cluster) Marshal() ([]byte, error) { return marshal(c) }

// Marshal encodes the node.
func (n *Node) Marshal() ([]byte, error) { return marshal(n) }

// Marshal encodes the service.
func (s *Service) Marshal() ([]byte, error) { return marshal(s) }

// Marshal encodes the endpoint slice.
func (e *EndpointSlice) Marshal() ([]byte, error) { return marshal(e) }

// Marshal encodes the identity.
func (i *Identity) Marshal() ([]byte, error) { return marshal(i) }

// Marshal encodes the ipcache entry.
func (e *IPCacheEntry) Marshal() ([]byte, error) { return marshal(e) }

// Unmarshal decodes a cluster config.
func (c *Cluster) Unmarshal(b []byte) error { return json.Unmarshal(b, c) }

// Unmarshal decodes a node.
func (n *Node) Unmarshal(b []byte) error { return json.Unmarshal(b, n) }

// Unmarshal decodes a service.
func (s *Service) Unmarshal(b []byte) error { return json.Unmarshal(b, s) }

// Unmarshal decodes an endpoint slice.
func (e *EndpointSlice) Unmarshal(b []byte) error { return json.Unmarshal(b, e) }

// Unmarshal decodes an identity.
func (i *Identity) Unmarshal(b []byte) error { return json.Unmarshal(b, i) }

// Unmarshal decodes an ipcache entry.
func (e *IPCacheEntry) Unmarshal(b []byte) error { return json.Unmarshal(b, e) }

// Decode decodes and validates the value stored at key, choosing the type
// from the key's kind. The returned object's key always equals key: a value
// that claims to live elsewhere is refused.
func Decode(key string, value []byte) (Object, error) {
	pk, err := ParseKey(key)
	if err != nil {
		return nil, err
	}
	var obj interface {
		Object
		Unmarshal([]byte) error
	}
	switch pk.Kind {
	case KindCluster:
		obj = new(Cluster)
	case KindNode:
		obj = new(Node)
	case KindService:
		obj = new(Service)
	case KindEndpoints:
		obj = new(EndpointSlice)
	case KindIdentity:
		obj = new(Identity)
	case KindIPCache:
		obj = new(IPCacheEntry)
	default:
		return nil, fmt.Errorf("key %q: kind %s holds no object", key, pk.Kind)
	}
	if err := obj.Unmarshal(value); err != nil {
		return nil, fmt.Errorf("key %q: decode: %w", key, err)
	}
	if err := obj.Validate(); err != nil {
		return nil, fmt.Errorf("key %q: %w", key, err)
	}
	if got := obj.Key(); got != key {
		return nil, fmt.Errorf("key %q: value describes key %q", key, got)
	}
	return obj, nil
}

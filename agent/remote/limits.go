package remote

import "github.com/clustermesh/clustermesh/api"

// Limits bound what one peer's store can make an agent hold. A peer beyond
// a limit gets its new keys refused (counted, reported in status and logged
// once) while what the agent holds of it stays in use.
type Limits struct {
	// Objects bounds the keys held per kind; a kind absent from the map
	// takes its DefaultLimits value.
	Objects map[api.Kind]int
	// Bytes bounds the total size of the values held; zero means
	// DefaultLimits' value.
	Bytes int64
}

// DefaultLimits are sized for a large cluster (5,000 nodes, 20,000 global
// services) with room to spare, and keep one peer below about half a GiB
// of agent memory even at the schema's largest values.
func DefaultLimits() Limits {
	return Limits{
		Objects: map[api.Kind]int{
			api.KindNode:      10_000,
			api.KindService:   50_000,
			api.KindEndpoints: 200_000,
			api.KindIdentity:  100_000,
			api.KindIPCache:   500_000,
		},
		Bytes: 256 << 20,
	}
}

// readerLimits are l with defaults filled in, as the store reader takes them.
func (l Limits) readerLimits() (map[api.Kind]int, int64) {
	d := DefaultLimits()
	objs := d.Objects
	for k, v := range l.Objects {
		if v > 0 {
			objs[k] = v
		}
	}
	bytes := d.Bytes
	if l.Bytes > 0 {
		bytes = l.Bytes
	}
	return objs, bytes
}

package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// The cm_tcp_vip ring (socklb.c) keeps, per TCP socket translated to a
// backend, the service address it dialled, for getpeername(): an array
// indexed by the socket's cookie modulo its size, so a connect writes the
// next entry in sequence instead of allocating socket storage.
const (
	mapTCPVIP = "cm_tcp_vip"
	// varTCPVIPMask is the program constant holding the ring's size - 1.
	varTCPVIPMask = "tcp_vip_mask"
	// mapSkVIPStale is the socket storage map of earlier builds, which the
	// ring replaced; its pin is removed once the new programs are attached.
	mapSkVIPStale = "cm_sk_vip"
)

// tcpVIP mirrors struct tcp_vip.
type tcpVIP struct {
	Cookie      uint64
	VIP         [16]byte
	Backend     [16]byte
	VIPPort     [2]byte
	BackendPort [2]byte
	Pad         uint32
}

// tcpVIPSlots is the ring size for a configured number of slots: the next
// power of two, as the programs index it with a mask.
func tcpVIPSlots(n int) uint32 {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len32(uint32(n-1))
}

// sizeTCPVIP sizes the ring in spec to slots entries and sets the programs'
// mask to match, and reports whether the ring is new (nothing pinned under
// its name in pinDir yet), in which case Open fills it (fillTCPVIP).
func sizeTCPVIP(spec *ebpf.CollectionSpec, pinDir string, slots uint32) (fresh bool, err error) {
	m, v := spec.Maps[mapTCPVIP], spec.Variables[varTCPVIPMask]
	if m == nil || v == nil {
		return false, fmt.Errorf("map %s or constant %s missing from the object", mapTCPVIP, varTCPVIPMask)
	}
	m.MaxEntries = slots
	if err := v.Set(slots - 1); err != nil {
		return false, fmt.Errorf("set %s: %w", varTCPVIPMask, err)
	}
	return freshPin(pinDir, mapTCPVIP)
}

// freshPin reports whether nothing is pinned under name in pinDir yet, so
// the map NewCollection is about to create is new.
func freshPin(pinDir, name string) (bool, error) {
	_, err := os.Stat(filepath.Join(pinDir, name))
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("map %s: %w", name, err)
	}
	return false, nil
}

// fillTCPVIP writes every entry of a new ring once, with no socket (cookie
// 0) and its index in the padding, so that no two pages hold the same
// bytes. Why: on some hosts (VMs whose host reclaims, or merges, pages the
// guest left zero) the first write to each never-written page of a fresh
// map costs a host fault, microseconds, which the connects would otherwise
// pay page by page until the ring has gone round once. Measured here:
// ~5 µs per connect while random entries were still untouched.
func fillTCPVIP(m *ebpf.Map) error {
	const chunk = 4096
	n := m.MaxEntries()
	keys := make([]uint32, 0, chunk)
	vals := make([]tcpVIP, 0, chunk)
	for i := uint32(0); i < n; i++ {
		keys = append(keys, i)
		vals = append(vals, tcpVIP{Pad: i + 1})
		if len(keys) == chunk || i == n-1 {
			if err := batchWrite(m, mapTCPVIP, keys, vals); err != nil {
				return fmt.Errorf("fill: %w", err)
			}
			keys, vals = keys[:0], vals[:0]
		}
	}
	return nil
}

// removeStaleSkVIP removes the pin of the socket storage map earlier builds
// kept TCP VIPs in. Called once the new programs are attached: sockets
// connected before the upgrade then show their backend to getpeername().
func removeStaleSkVIP(pinDir string, log *slog.Logger) {
	err := os.Remove(filepath.Join(pinDir, mapSkVIPStale))
	switch {
	case err == nil:
		log.Info("removed the pin of a map earlier builds used", "map", mapSkVIPStale)
	case !errors.Is(err, os.ErrNotExist):
		log.Warn("cannot remove the pin of a map earlier builds used", "map", mapSkVIPStale, "error", err)
	}
}

package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Map names, also the file names of their pins. They must match socklb.c.
const (
	mapServices = "cm_services"
	mapSlots    = "cm_slots"
	mapBackends = "cm_backends"
	mapNodes    = "cm_nodes"
	mapRevNAT   = "cm_revnat"
	mapStats    = "cm_stats"
)

// Go mirrors of the C map keys and values in socklb.c. Field order and sizes
// must match byte for byte; addresses and ports are kept as network-order
// bytes so they need no swapping.

type svcKey struct {
	Addr  [16]byte
	Port  [2]byte
	Proto uint8
	Pad   uint8
}

type svcValue struct {
	Set       uint32
	Preferred uint16
	Fallback  uint16
	Flags     uint16
	Pad       uint16
	Rev       uint32
	// Head holds the backend IDs of the set's first slotGroup slots: a
	// connect to a service of up to slotGroup backends reads no cm_slots
	// entry. It comes last: builds before slot heads had the fields above
	// alone (see migrateServices).
	Head slotValue
}

// headlessValueSize is the size of a service entry without its head, the whole
// value in builds before slot heads.
const headlessValueSize = unsafe.Offsetof(svcValue{}.Head)

// slotGroup is SLOT_GROUP in socklb.c: the first slotGroup slots of a set
// are the head of its service entry, the rest are in cm_slots in groups of
// slotGroup, keyed by (set, slot index / slotGroup), from group 1; a 0 ID
// marks a slot past the set's end.
const slotGroup = 4

type slotKey struct {
	Set   uint32
	Group uint32
}

type slotValue [slotGroup]uint32

// slotGroups is the number of slot groups of a set of n slots, the head
// included: cm_slots holds groups 1 to slotGroups(n)-1.
func slotGroups(n int) int { return (n + slotGroup - 1) / slotGroup }

// slotID returns the backend ID of slot i of a service entry's set, from
// its head or from the groups in cm_slots, 0 if absent.
func slotID(v *svcValue, groups map[slotKey]slotValue, i int) uint32 {
	if i < slotGroup {
		return v.Head[i]
	}
	return groups[slotKey{Set: v.Set, Group: uint32(i / slotGroup)}][i%slotGroup]
}

type backendValue struct {
	Addr      [16]byte
	Port      [2]byte
	Family    uint8
	Pad       uint8
	ClusterID uint32
	NodeID    uint32
}

// nodeNameLen is the room for a node name in cm_nodes; longer names are
// rejected (Kubernetes node names are DNS subdomains, at most 253 bytes, so they fit).
const nodeNameLen = 256

// nodeFlagDown marks a node whose backends are skipped.
const nodeFlagDown = 1

type nodeValue struct {
	Flags     uint32
	ClusterID uint32
	Name      [nodeNameLen]byte
}

// checkLayout checks that the Go mirrors have the sizes of the maps' keys
// and values: update and remove hand the kernel pointers to them, with no
// length check of their own.
func checkLayout(maps map[string]*ebpf.Map) error {
	for _, c := range []struct {
		name       string
		key, value uintptr
	}{
		{mapServices, unsafe.Sizeof(uint32(0)), unsafe.Sizeof(svcEntry{})},
		{mapSlots, unsafe.Sizeof(slotKey{}), unsafe.Sizeof(slotValue{})},
		{mapBackends, unsafe.Sizeof(uint32(0)), unsafe.Sizeof(backendValue{})},
		{mapNodes, unsafe.Sizeof(uint32(0)), unsafe.Sizeof(nodeValue{})},
		{mapSvcAffinity, unsafe.Sizeof(svcKey{}), unsafe.Sizeof(uint32(0))},
		{mapTCPVIP, unsafe.Sizeof(uint32(0)), unsafe.Sizeof(tcpVIP{})},
	} {
		m := maps[c.name]
		if m == nil {
			return fmt.Errorf("map %s missing from the object", c.name)
		}
		if uintptr(m.KeySize()) != c.key || uintptr(m.ValueSize()) != c.value {
			return fmt.Errorf("map %s: key/value %d/%d bytes, Go mirror %d/%d", c.name, m.KeySize(), m.ValueSize(), c.key, c.value)
		}
	}
	return nil
}

const (
	afInet  = 2
	afInet6 = 10
)

// Indexes of cm_stats.
const (
	statTranslated = iota
	statFallback
	statNoBackend
	statRevNAT
	statMax
)

var statNames = [statMax]string{"translated", "fallback", "no_backend", "revnat"}

func addrBytes(a netip.Addr) [16]byte { return a.Unmap().As16() }

func portBytes(p uint16) [2]byte {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return b
}

func toAddrPort(addr [16]byte, port [2]byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(addr).Unmap(), binary.BigEndian.Uint16(port[:]))
}

func frontendKey(fe loadbalancer.Frontend) svcKey {
	return svcKey{
		Addr:  addrBytes(fe.Addr.Addr()),
		Port:  portBytes(fe.Addr.Port()),
		Proto: uint8(fe.Protocol),
	}
}

func (k svcKey) frontend() loadbalancer.Frontend {
	return loadbalancer.Frontend{Addr: toAddrPort(k.Addr, k.Port), Protocol: loadbalancer.Protocol(k.Proto)}
}

func (v nodeValue) ref() loadbalancer.NodeRef {
	name := v.Name[:]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return loadbalancer.NodeRef{ClusterID: v.ClusterID, Name: string(name)}
}

func newNodeValue(n loadbalancer.NodeRef, down bool) (nodeValue, error) {
	v := nodeValue{ClusterID: n.ClusterID}
	if len(n.Name) >= nodeNameLen {
		return v, fmt.Errorf("node %s: name longer than %d bytes", n, nodeNameLen-1)
	}
	copy(v.Name[:], n.Name)
	if down {
		v.Flags = nodeFlagDown
	}
	return v, nil
}

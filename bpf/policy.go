package bpf

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Policy maps and the ingress program; names match policy.h.
const (
	mapIPCache     = "cm_ipcache"
	mapPolNetns    = "cm_pol_netns"
	mapPolState    = "cm_pol_state"
	mapPolicy      = "cm_pol"
	mapPolCT       = "cm_pol_ct"
	mapPolStats    = "cm_pol_stats"
	progPodIngress = "cm_pod_ingress"
	// tcxPinPrefix starts the pin of each pod interface's ingress link,
	// followed by the interface index.
	tcxPinPrefix = "tcx_"
)

// Reserved identities (Cilium's numbers): the local node, and any address
// no cluster's ipcache names.
const (
	IdentityHost  uint32 = 1
	IdentityWorld uint32 = 2
)

// Verdict is what a policy entry says of matching traffic.
type Verdict uint8

const (
	Allow Verdict = 1
	Deny  Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// PolicyDirection of a policy entry, relative to the local endpoint.
type PolicyDirection uint8

const (
	DirIngress PolicyDirection = 0
	DirEgress  PolicyDirection = 1
)

func (d PolicyDirection) String() string {
	if d == DirEgress {
		return "egress"
	}
	return "ingress"
}

// PolicyKey is one entry of an identity's policy: traffic with Peer (0:
// any) on Proto (0: any; IPPROTO numbers) and Port (0: any).
type PolicyKey struct {
	Dir   PolicyDirection
	Peer  uint32
	Proto uint8
	Port  uint16
}

// IdentityPolicy is the compiled policy of one local identity: which
// directions are enforced (default-deny) and the entries. An entry in a
// direction that is not enforced has no effect.
type IdentityPolicy struct {
	Ingress, Egress bool
	Entries         map[PolicyKey]Verdict
}

func (p *IdentityPolicy) flags() uint32 {
	var f uint32
	if p.Ingress {
		f |= polFlagIngress
	}
	if p.Egress {
		f |= polFlagEgress
	}
	return f
}

// PolicyEndpoint maps a local pod's network namespace (by its cookie, as
// bpf_get_netns_cookie returns it) to the pod's identity and addresses, so
// that the socket hooks know whose egress policy applies.
type PolicyEndpoint struct {
	NetnsCookie uint64
	Identity    uint32
	IPv4, IPv6  netip.Addr
}

const (
	polFlagIngress = 1
	polFlagEgress  = 2
)

// Go mirrors of policy.h's keys and values.
type ipcKey struct{ Addr [16]byte }

type polEndpoint struct {
	Identity uint32
	IP4      [4]byte
	IP6      [16]byte
}

type polState struct {
	Flags  uint32
	Rev    uint32
	Shapes uint32
}

// shapes returns the wildcard combinations p's entries use, per direction
// (see pol_state in policy.h).
func (p *IdentityPolicy) shapes() uint32 {
	var s uint32
	for k := range p.Entries {
		i := 0
		if k.Peer == 0 {
			i |= 4
		}
		if k.Proto == 0 {
			i |= 2
		}
		if k.Port == 0 {
			i |= 1
		}
		s |= 1 << (uint(k.Dir)*8 + uint(i))
	}
	return s
}

type polKey struct {
	Identity uint32
	Peer     uint32
	Dir      uint8
	Proto    uint8
	Port     [2]byte
}

// Indexes of cm_pol_stats.
var polStatNames = []string{"policy_egress_denied", "policy_ingress_dropped", "policy_egress_allowed", "policy_ingress_allowed"}

// policyState is the userspace mirror of the policy maps.
type policyState struct {
	ipcache  map[netip.Addr]uint32
	netns    map[uint64]polEndpoint
	states   map[uint32]polState
	policies map[uint32]map[PolicyKey]Verdict
	// ingress are the tcx links of pod interfaces, by interface index.
	ingress map[int]link.Link
}

func newPolicyState() *policyState {
	return &policyState{
		ipcache:  map[netip.Addr]uint32{},
		netns:    map[uint64]polEndpoint{},
		states:   map[uint32]polState{},
		policies: map[uint32]map[PolicyKey]Verdict{},
		ingress:  map[int]link.Link{},
	}
}

// adoptPolicy rebuilds the policy mirror from the pinned maps and links of
// an earlier run, so that enforcement never lapses across a restart and the
// next changes are written as differences.
func (d *Datapath) adoptPolicy() error {
	ps := newPolicyState()
	m := d.coll.Maps
	var (
		ik  ipcKey
		iid uint32
	)
	it := m[mapIPCache].Iterate()
	for it.Next(&ik, &iid) {
		ps.ipcache[netip.AddrFrom16(ik.Addr).Unmap()] = iid
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapIPCache, err)
	}
	var (
		cookie uint64
		ep     polEndpoint
	)
	it = m[mapPolNetns].Iterate()
	for it.Next(&cookie, &ep) {
		ps.netns[cookie] = ep
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapPolNetns, err)
	}
	var (
		sid uint32
		st  polState
	)
	it = m[mapPolState].Iterate()
	for it.Next(&sid, &st) {
		ps.states[sid] = st
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapPolState, err)
	}
	var (
		pk polKey
		v  uint8
	)
	it = m[mapPolicy].Iterate()
	for it.Next(&pk, &v) {
		es := ps.policies[pk.Identity]
		if es == nil {
			es = map[PolicyKey]Verdict{}
			ps.policies[pk.Identity] = es
		}
		es[PolicyKey{Dir: PolicyDirection(pk.Dir), Peer: pk.Peer, Proto: pk.Proto, Port: uint16(pk.Port[0])<<8 | uint16(pk.Port[1])}] = Verdict(v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapPolicy, err)
	}
	// Pod interface links: swap the new program in; forget links whose
	// interface is gone.
	pins, err := filepath.Glob(filepath.Join(d.cfg.PinDir, tcxPinPrefix+"*"))
	if err != nil {
		return err
	}
	for _, pin := range pins {
		ifindex, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(pin), tcxPinPrefix))
		if err != nil {
			continue
		}
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			_ = os.Remove(pin)
			continue
		}
		info, ierr := l.Info()
		if ierr != nil || info.TCX() == nil || int(info.TCX().Ifindex) != ifindex {
			_ = l.Unpin()
			l.Close()
			continue
		}
		if err := l.Update(d.coll.Programs[progPodIngress]); err != nil {
			l.Close()
			return fmt.Errorf("bpf: pod interface %d: replace program in pinned link: %w", ifindex, err)
		}
		ps.ingress[ifindex] = l
	}
	d.pol = ps
	return nil
}

func ipcKeyOf(a netip.Addr) ipcKey { return ipcKey{Addr: addrBytes(a)} }

// SetIPCache says which identity owns addr (a pod of any connected cluster,
// or a local node address with IdentityHost). Addresses with no entry are
// IdentityWorld to the policy checks.
func (d *Datapath) SetIPCache(addr netip.Addr, identity uint32) error {
	addr = addr.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if cur, ok := d.pol.ipcache[addr]; ok && cur == identity {
		return nil
	}
	if err := d.coll.Maps[mapIPCache].Update(ipcKeyOf(addr), identity, ebpf.UpdateAny); err != nil {
		return d.mapErr(mapIPCache, fmt.Sprintf("ipcache %s -> %d", addr, identity), err)
	}
	d.pol.ipcache[addr] = identity
	return nil
}

// DeleteIPCache forgets addr's identity.
func (d *Datapath) DeleteIPCache(addr netip.Addr) error {
	addr = addr.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if _, ok := d.pol.ipcache[addr]; !ok {
		return nil
	}
	if err := d.coll.Maps[mapIPCache].Delete(ipcKeyOf(addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache %s: map %s: %w", addr, mapIPCache, err)
	}
	delete(d.pol.ipcache, addr)
	return nil
}

// IPCache returns the programmed address → identity entries.
func (d *Datapath) IPCache() map[netip.Addr]uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.pol.ipcache)
}

// SetPolicyEndpoint maps a pod's network namespace to its identity and
// addresses (egress checks of its sockets start with the next call).
func (d *Datapath) SetPolicyEndpoint(ep PolicyEndpoint) error {
	if ep.NetnsCookie == 0 {
		return errors.New("policy endpoint: netns cookie 0")
	}
	v := polEndpoint{Identity: ep.Identity}
	if ep.IPv4.IsValid() {
		v.IP4 = ep.IPv4.Unmap().As4()
	}
	if ep.IPv6.IsValid() {
		v.IP6 = ep.IPv6.As16()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if cur, ok := d.pol.netns[ep.NetnsCookie]; ok && cur == v {
		return nil
	}
	if err := d.coll.Maps[mapPolNetns].Update(ep.NetnsCookie, v, ebpf.UpdateAny); err != nil {
		return d.mapErr(mapPolNetns, fmt.Sprintf("endpoint netns %d (identity %d)", ep.NetnsCookie, ep.Identity), err)
	}
	d.pol.netns[ep.NetnsCookie] = v
	return nil
}

// DeletePolicyEndpoint forgets a pod's network namespace.
func (d *Datapath) DeletePolicyEndpoint(cookie uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if _, ok := d.pol.netns[cookie]; !ok {
		return nil
	}
	if err := d.coll.Maps[mapPolNetns].Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("endpoint netns %d: map %s: %w", cookie, mapPolNetns, err)
	}
	delete(d.pol.netns, cookie)
	return nil
}

// PolicyEndpoints lists the mapped network namespaces by cookie.
func (d *Datapath) PolicyEndpoints() []PolicyEndpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]PolicyEndpoint, 0, len(d.pol.netns))
	for c, v := range d.pol.netns {
		ep := PolicyEndpoint{NetnsCookie: c, Identity: v.Identity}
		if v.IP4 != ([4]byte{}) {
			ep.IPv4 = netip.AddrFrom4(v.IP4)
		}
		if v.IP6 != ([16]byte{}) {
			ep.IPv6 = netip.AddrFrom16(v.IP6)
		}
		out = append(out, ep)
	}
	slices.SortFunc(out, func(a, b PolicyEndpoint) int { return cmp.Compare(a.NetnsCookie, b.NetnsCookie) })
	return out
}

func polKeyOf(identity uint32, k PolicyKey) polKey {
	return polKey{Identity: identity, Peer: k.Peer, Dir: uint8(k.Dir), Proto: k.Proto, Port: portBytes(k.Port)}
}

// SetIdentityPolicy programs the policy of a local identity, as a
// difference against what is programmed. The order keeps every moment
// safe: new and changed entries first, then the enforced directions, the
// wildcard shapes the checks look up and a new revision (which also voids
// the UDP exchanges remembered under the old policy), then the entries that
// went away. Until the state switches, the old policy holds whole. A direction turned on is
// thus never enforced before its allow entries exist, and a deny never
// lapses before its replacement is in place. On error, what was written
// stays and is reported; calling again with the same policy converges.
func (d *Datapath) SetIdentityPolicy(identity uint32, p IdentityPolicy) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	pm := d.coll.Maps[mapPolicy]
	cur := d.pol.policies[identity]
	if cur == nil {
		cur = map[PolicyKey]Verdict{}
		d.pol.policies[identity] = cur
	}
	changed := false
	for k, v := range p.Entries {
		if v != Allow && v != Deny {
			return fmt.Errorf("identity %d: entry %+v: verdict %d", identity, k, v)
		}
		if old, ok := cur[k]; ok && old == v {
			continue
		}
		if err := pm.Update(polKeyOf(identity, k), uint8(v), ebpf.UpdateAny); err != nil {
			return d.mapErr(mapPolicy, fmt.Sprintf("identity %d: %s entry peer %d proto %d port %d", identity, k.Dir, k.Peer, k.Proto, k.Port), err)
		}
		cur[k] = v
		changed = true
	}
	st, had := d.pol.states[identity]
	var stale []PolicyKey
	for k := range cur {
		if _, ok := p.Entries[k]; !ok {
			stale = append(stale, k)
		}
	}
	if !had || changed || len(stale) > 0 || st.Flags != p.flags() || st.Shapes != p.shapes() {
		next := polState{Flags: p.flags(), Rev: st.Rev + 1, Shapes: p.shapes()}
		if err := d.coll.Maps[mapPolState].Update(identity, next, ebpf.UpdateAny); err != nil {
			return d.mapErr(mapPolState, fmt.Sprintf("identity %d: state", identity), err)
		}
		d.pol.states[identity] = next
	}
	for _, k := range stale {
		if err := pm.Delete(polKeyOf(identity, k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("identity %d: delete entry %+v: map %s: %w", identity, k, mapPolicy, err)
		}
		delete(cur, k)
	}
	return nil
}

// DeleteIdentityPolicy returns the identity to default-allow: its state
// first (nothing is enforced from then on), then its entries.
func (d *Datapath) DeleteIdentityPolicy(identity uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if _, ok := d.pol.states[identity]; ok {
		if err := d.coll.Maps[mapPolState].Delete(identity); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("identity %d: delete state: map %s: %w", identity, mapPolState, err)
		}
		delete(d.pol.states, identity)
	}
	for k := range d.pol.policies[identity] {
		if err := d.coll.Maps[mapPolicy].Delete(polKeyOf(identity, k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("identity %d: delete entry %+v: map %s: %w", identity, k, mapPolicy, err)
		}
		delete(d.pol.policies[identity], k)
	}
	delete(d.pol.policies, identity)
	return nil
}

// IdentityPolicies returns the programmed policies by local identity.
func (d *Datapath) IdentityPolicies() map[uint32]IdentityPolicy {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[uint32]IdentityPolicy, len(d.pol.states))
	for id, st := range d.pol.states {
		out[id] = IdentityPolicy{
			Ingress: st.Flags&polFlagIngress != 0,
			Egress:  st.Flags&polFlagEgress != 0,
			Entries: maps.Clone(d.pol.policies[id]),
		}
	}
	return out
}

func tcxPin(dir string, ifindex int) string {
	return filepath.Join(dir, tcxPinPrefix+strconv.Itoa(ifindex))
}

// AttachIngress puts the ingress check on a local pod's interface: ifindex
// is the host side of its link (the device the node routes the pod's
// address to), and the check sees every packet on its way into the pod.
// The link is pinned, so it survives the agent; attaching twice is a no-op.
func (d *Datapath) AttachIngress(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if _, ok := d.pol.ingress[ifindex]; ok {
		return nil
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   d.coll.Programs[progPodIngress],
		Attach:    ebpf.AttachTCXEgress,
	})
	if err != nil {
		return fmt.Errorf("bpf: attach ingress check to interface %d: %w", ifindex, err)
	}
	if err := l.Pin(tcxPin(d.cfg.PinDir, ifindex)); err != nil {
		l.Close()
		return fmt.Errorf("bpf: pin ingress link of interface %d: %w", ifindex, err)
	}
	d.pol.ingress[ifindex] = l
	return nil
}

// DetachIngress removes the ingress check from an interface (a no-op when
// none is attached, or the interface is gone).
func (d *Datapath) DetachIngress(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.pol.ingress[ifindex]
	if !ok {
		return nil
	}
	delete(d.pol.ingress, ifindex)
	err := l.Unpin()
	if derr := l.Detach(); derr != nil && !errors.Is(derr, unix.ENODEV) && !errors.Is(derr, ErrNotSupported) {
		err = errors.Join(err, derr)
	}
	l.Close()
	if err != nil {
		return fmt.Errorf("bpf: detach ingress check from interface %d: %w", ifindex, err)
	}
	return nil
}

// IngressInterfaces lists the interfaces with an ingress check.
func (d *Datapath) IngressInterfaces() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]int, 0, len(d.pol.ingress))
	for i := range d.pol.ingress {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

// PolicyStats returns the kernel's policy counters summed over CPUs.
func (d *Datapath) PolicyStats() (map[string]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	return readPolicyStats(d.coll.Maps[mapPolStats])
}

func readPolicyStats(m *ebpf.Map) (map[string]uint64, error) {
	out := make(map[string]uint64, len(polStatNames))
	for i, name := range polStatNames {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("map %s: %w", mapPolStats, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

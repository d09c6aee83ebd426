package bpf

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cilium/ebpf"
)

// Session affinity maps (see socklb.c): the timeout of each service with
// affinity, and the backend each client (network namespace) was given.
const (
	mapSvcAffinity = "cm_svc_affinity"
	mapAffinity    = "cm_affinity"
	// svcFlagAffinity in svcValue.Flags: the service has an entry in
	// cm_svc_affinity.
	svcFlagAffinity = 1
)

// affinitySeconds is the timeout the datapath stores: whole seconds (the
// Service API's unit), at least one.
func affinitySeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := math.Ceil(d.Seconds())
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

// adoptAffinity rebuilds the mirror of cm_svc_affinity.
func (d *Datapath) adoptAffinity() error {
	d.affinity = map[svcKey]uint32{}
	var (
		k svcKey
		v uint32
	)
	it := d.coll.Maps[mapSvcAffinity].Iterate()
	for it.Next(&k, &v) {
		d.affinity[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapSvcAffinity, err)
	}
	return nil
}

// setAffinity writes a service's timeout before its entry carries the
// affinity flag (a reader that sees the flag finds the timeout). d.mu held.
func (d *Datapath) setAffinity(key svcKey, seconds uint32) error {
	if seconds == 0 || d.affinity[key] == seconds {
		return nil
	}
	if err := d.writeAffinity(key, seconds); err != nil {
		return d.mapErr(mapSvcAffinity, fmt.Sprintf("service %s: affinity timeout", key.frontend()), err)
	}
	d.affinity[key] = seconds
	return nil
}

// clearAffinity removes a service's timeout once its entry no longer
// carries the flag (or is gone). d.mu held.
func (d *Datapath) clearAffinity(key svcKey) error {
	if _, ok := d.affinity[key]; !ok {
		return nil
	}
	k := key // escapes: allocated only here, not on every call
	if err := remove(d.coll.Maps[mapSvcAffinity], &k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("service %s: delete affinity timeout: map %s: %w", key.frontend(), mapSvcAffinity, err)
	}
	delete(d.affinity, key)
	return nil
}

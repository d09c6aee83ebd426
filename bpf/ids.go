package bpf

// idAllocator hands out IDs 1..max. It cycles through the space instead of
// reusing the lowest free ID, so an ID just released (whose old entries a
// kernel reader may still be looking at) is the last to come back.
type idAllocator struct {
	max  uint32
	next uint32
	used map[uint32]struct{}
}

func newIDAllocator(max uint32) *idAllocator {
	return &idAllocator{max: max, next: 1, used: make(map[uint32]struct{})}
}

func (a *idAllocator) free() int { return int(a.max) - len(a.used) }

func (a *idAllocator) alloc() (uint32, bool) {
	if len(a.used) >= int(a.max) {
		return 0, false
	}
	for {
		id := a.next
		a.next = a.next%a.max + 1
		if _, ok := a.used[id]; !ok {
			a.used[id] = struct{}{}
			return id, true
		}
	}
}

// mark records an ID found in use (adoption). It reports false if the ID is
// outside the space.
func (a *idAllocator) mark(id uint32) bool {
	if id == 0 || id > a.max {
		return false
	}
	a.used[id] = struct{}{}
	if id >= a.next {
		a.next = id%a.max + 1
	}
	return true
}

func (a *idAllocator) release(id uint32) { delete(a.used, id) }

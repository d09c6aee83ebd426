package bpf

import "math/bits"

// idAllocator hands out IDs 1..max. It cycles through the space instead of
// reusing the lowest free ID, so an ID just released (whose old entries a
// kernel reader may still be looking at) is the last to come back.
//
// Used IDs are bits in pages of idPageBits, allocated when first used and
// dropped when empty, so a large space (slot sets: 2^31) costs memory only
// where IDs live. The cursor moves a word (64 IDs) at a time and skips full
// pages, so alloc is O(1) amortised however crowded the space behind the
// cursor is.
type idAllocator struct {
	max   uint32
	next  uint32
	used  int
	pages []*idPage
}

const (
	idPageShift = 16
	idPageBits  = 1 << idPageShift
	idPageMask  = idPageBits - 1
	idPageWords = idPageBits / 64
)

type idPage struct {
	used int
	bits [idPageWords]uint64
}

// newIDPage returns page pi empty; page 0 has ID 0, which is never handed
// out, marked taken so that a full page counts as full.
func newIDPage(pi uint32) *idPage {
	pg := &idPage{}
	if pi == 0 {
		pg.bits[0], pg.used = 1, 1
	}
	return pg
}

func newIDAllocator(max uint32) *idAllocator {
	return &idAllocator{max: max, next: 1}
}

func (a *idAllocator) free() int { return int(a.max) - a.used }

func (a *idAllocator) page(pi uint32) *idPage {
	if int(pi) < len(a.pages) {
		return a.pages[pi]
	}
	return nil
}

// set marks id used; it reports false if it already was.
func (a *idAllocator) set(id uint32) bool {
	pi := id >> idPageShift
	if int(pi) >= len(a.pages) {
		a.pages = append(a.pages, make([]*idPage, int(pi)+1-len(a.pages))...)
	}
	pg := a.pages[pi]
	if pg == nil {
		pg = newIDPage(pi)
		a.pages[pi] = pg
	}
	w, b := (id&idPageMask)>>6, id&63
	if pg.bits[w]&(1<<b) != 0 {
		return false
	}
	pg.bits[w] |= 1 << b
	pg.used++
	a.used++
	return true
}

// advance moves the cursor past id, wrapping to 1 after max.
func (a *idAllocator) advance(id uint32) {
	if id >= a.max {
		a.next = 1
		return
	}
	a.next = id + 1
}

func (a *idAllocator) alloc() (uint32, bool) {
	if a.used >= int(a.max) {
		return 0, false
	}
	// Each pass either returns or moves the cursor to the next page (or
	// back to 1), and a free ID exists: at most every page is visited once.
	for {
		id := a.next
		pi := id >> idPageShift
		pg := a.page(pi)
		if pg == nil {
			a.set(id)
			a.advance(id)
			return id, true
		}
		if pg.used < idPageBits {
			w := (id & idPageMask) >> 6
			// IDs below the cursor in its word count as taken.
			word := pg.bits[w] | (uint64(1)<<(id&63) - 1)
			for {
				if word != ^uint64(0) {
					found := pi<<idPageShift | w<<6 | uint32(bits.TrailingZeros64(^word))
					if found > a.max {
						break
					}
					a.set(found)
					a.advance(found)
					return found, true
				}
				w++
				if w == idPageWords {
					break
				}
				word = pg.bits[w]
			}
		}
		if nextPage := uint64(pi+1) << idPageShift; nextPage > uint64(a.max) {
			a.next = 1
		} else {
			a.next = uint32(nextPage)
		}
	}
}

// mark records an ID found in use (adoption). It reports false if the ID is
// outside the space.
func (a *idAllocator) mark(id uint32) bool {
	if id == 0 || id > a.max {
		return false
	}
	a.set(id)
	if id >= a.next {
		a.advance(id)
	}
	return true
}

func (a *idAllocator) release(id uint32) {
	if id == 0 {
		return
	}
	pg := a.page(id >> idPageShift)
	if pg == nil {
		return
	}
	w, b := (id&idPageMask)>>6, id&63
	if pg.bits[w]&(1<<b) == 0 {
		return
	}
	pg.bits[w] &^= 1 << b
	pg.used--
	a.used--
	if pg.used == 0 || (id>>idPageShift == 0 && pg.used == 1) {
		a.pages[id>>idPageShift] = nil
	}
}

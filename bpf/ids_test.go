package bpf

import (
	"math"
	"testing"
)

func TestIDAllocatorCursor(t *testing.T) {
	tests := []struct {
		name string
		max  uint32
		run  func(t *testing.T, a *idAllocator)
	}{
		{"sequential from 1", 10, func(t *testing.T, a *idAllocator) {
			for want := uint32(1); want <= 10; want++ {
				if got, ok := a.alloc(); !ok || got != want {
					t.Fatalf("alloc = %d, %v; want %d", got, ok, want)
				}
			}
			if id, ok := a.alloc(); ok {
				t.Fatalf("alloc on a full space = %d", id)
			}
			if a.free() != 0 {
				t.Fatalf("free = %d, want 0", a.free())
			}
		}},
		{"released ID comes back last", 4, func(t *testing.T, a *idAllocator) {
			for i := 0; i < 3; i++ {
				a.alloc()
			}
			a.release(2)
			if got, _ := a.alloc(); got != 4 {
				t.Fatalf("alloc = %d, want 4 (the cursor goes on before reusing 2)", got)
			}
			if got, _ := a.alloc(); got != 2 {
				t.Fatalf("alloc = %d, want 2 (after wrapping)", got)
			}
		}},
		{"wraps past a crowded range", 200000, func(t *testing.T, a *idAllocator) {
			for i := 0; i < 150000; i++ {
				a.alloc()
			}
			a.release(70000)
			for id := uint32(150001); id <= 200000; id++ {
				a.mark(id)
			}
			if got, ok := a.alloc(); !ok || got != 70000 {
				t.Fatalf("alloc = %d, %v; want the one free ID 70000", got, ok)
			}
			if a.free() != 0 {
				t.Fatalf("free = %d, want 0", a.free())
			}
		}},
		{"mark moves the cursor past adopted IDs", 100, func(t *testing.T, a *idAllocator) {
			if !a.mark(7) || !a.mark(3) {
				t.Fatal("mark in range refused")
			}
			if a.mark(0) || a.mark(101) {
				t.Fatal("mark out of range accepted")
			}
			if got, _ := a.alloc(); got != 8 {
				t.Fatalf("alloc = %d, want 8", got)
			}
			if a.free() != 97 {
				t.Fatalf("free = %d, want 97", a.free())
			}
		}},
		{"double mark and release count once", 100, func(t *testing.T, a *idAllocator) {
			a.mark(5)
			a.mark(5)
			a.release(5)
			a.release(5)
			a.release(99)
			if a.free() != 100 {
				t.Fatalf("free = %d, want 100", a.free())
			}
		}},
		{"empty pages are dropped", math.MaxInt32, func(t *testing.T, a *idAllocator) {
			var ids []uint32
			for i := 0; i < 3*idPageBits; i++ {
				id, _ := a.alloc()
				ids = append(ids, id)
			}
			for _, id := range ids {
				a.release(id)
			}
			for i, pg := range a.pages {
				if pg != nil {
					t.Fatalf("page %d kept with %d IDs", i, pg.used)
				}
			}
			if got, _ := a.alloc(); got != uint32(3*idPageBits+1) {
				t.Fatalf("alloc = %d, want %d", got, 3*idPageBits+1)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newIDAllocator(tt.max)) })
	}
}

// BenchmarkIDAllocCrowded allocates and releases one ID in a space whose
// first 100,000 IDs are taken and the cursor back at the start (as after a
// wrap): each alloc skips the taken range.
func BenchmarkIDAllocCrowded(b *testing.B) {
	a := newIDAllocator(math.MaxInt32)
	for i := 0; i < 100000; i++ {
		a.alloc()
	}
	for i := 0; i < b.N; i++ {
		a.next = 1
		id, _ := a.alloc()
		a.release(id)
	}
}

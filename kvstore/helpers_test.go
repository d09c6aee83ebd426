package kvstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// waitTimeout bounds how long a test waits for the store to converge. It is
// a liveness bound, not a performance assertion.
const waitTimeout = 60 * time.Second

// eventually is poll.Eventually with the store's waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Eventually(t, waitTimeout, what, cond)
}

func testNode(name string, n int) *api.Node {
	return &api.Node{
		Cluster:   "c1",
		Name:      name,
		Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)})},
		Zone:      fmt.Sprintf("zone-%d", n),
	}
}

// truth is what a writer has put: key -> encoded value.
type truth map[string][]byte

func (tr truth) upsert(t *testing.T, ctx context.Context, w *Writer, obj api.Object) {
	t.Helper()
	if err := w.Upsert(ctx, obj); err != nil {
		t.Fatal(err)
	}
	b, err := obj.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tr[obj.Key()] = b
}

func (tr truth) delete(t *testing.T, ctx context.Context, w *Writer, key string) {
	t.Helper()
	if err := w.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	delete(tr, key)
}

// view is a consumer of one Watch: the objects it holds and every event it
// received.
type view struct {
	mu     sync.Mutex
	objs   map[string][]byte
	events []Event
	synced bool
	done   chan struct{}
}

func watchView(t *testing.T, r *Reader, kind api.Kind) *view {
	ctx, cancel := context.WithCancel(context.Background())
	v := &view{objs: map[string][]byte{}, done: make(chan struct{})}
	ch := r.Watch(ctx, kind)
	go func() {
		defer close(v.done)
		for ev := range ch {
			v.mu.Lock()
			v.events = append(v.events, ev)
			switch ev.Type {
			case EventUpsert:
				b, err := ev.Object.Marshal()
				if err != nil {
					panic(err)
				}
				v.objs[ev.Key] = b
			case EventDelete:
				delete(v.objs, ev.Key)
			case EventSynced:
				v.synced = true
			}
			v.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-v.done
	})
	return v
}

func (v *view) equals(tr truth) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.objs) != len(tr) {
		return false
	}
	for k, b := range tr {
		if !bytes.Equal(v.objs[k], b) {
			return false
		}
	}
	return true
}

func (v *view) has(key string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.objs[key]
	return ok
}

func (v *view) isSynced() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.synced
}

func (v *view) count(typ EventType) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, ev := range v.events {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

func (v *view) deletes() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var keys []string
	for _, ev := range v.events {
		if ev.Type == EventDelete {
			keys = append(keys, ev.Key)
		}
	}
	sort.Strings(keys)
	return keys
}

func (v *view) diff(tr truth) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for k, val := range tr {
		if got, ok := v.objs[k]; !ok {
			fmt.Fprintf(&b, "missing %s; ", k)
		} else if !bytes.Equal(got, val) {
			fmt.Fprintf(&b, "stale %s; ", k)
		}
	}
	for k := range v.objs {
		if _, ok := tr[k]; !ok {
			fmt.Fprintf(&b, "extra %s; ", k)
		}
	}
	return b.String()
}

func waitConverged(t *testing.T, v *view, tr truth) {
	t.Helper()
	poll.Eventually(t, waitTimeout, "reader to converge on the writer's truth", func(context.Context) error {
		if !v.equals(tr) {
			return errors.New(v.diff(tr))
		}
		return nil
	})
}

// proxy is a TCP relay between readers and etcd that a test can cut, to
// make a reader miss changes while the store itself stays up.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	cut    bool
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) endpoint() string { return "https://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// setCut drops every relayed connection and refuses new ones while cut.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.setCut(true)
	p.wg.Wait()
}

// helper to strip the scheme of an endpoint
func hostPort(endpoint string) string {
	return strings.TrimPrefix(endpoint, "https://")
}

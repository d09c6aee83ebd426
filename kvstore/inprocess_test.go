package kvstore

import (
	"context"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

// TestInProcessClient writes through a Writer on the in-process client (as
// the owner: the store's auth refuses a request without an identity, so
// the put, the lease and the canary would all fail without it) and reads
// it back through an agent's TLS client and through the in-process
// client's own watch. Closing the in-process client leaves the server
// serving.
func TestInProcessClient(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	local := srv.InProcessClient()
	if !local.InProcess() {
		t.Fatal("InProcess() = false")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	w, err := NewWriter(local, "c1", &WriterOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	defer func() { w.Close(); stop(); <-done }()
	tr := truth{}
	tr.upsert(t, ctx, w, testNode("node-1", 1))
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}

	agent := newClient(t, p.clientConfig(srv.Endpoint(), UserAgent))
	over := watchView(t, NewReader(agent, "c1", nil), api.KindNode)
	waitConverged(t, over, tr)
	inproc := NewReader(local, "c1", nil)
	in := watchView(t, inproc, api.KindNode)
	waitConverged(t, in, tr)
	if st := inproc.Status(); !st.Connected {
		t.Errorf("in-process reader's status: %+v, want connected", st)
	}

	// A change after the listing reaches both watches.
	tr.upsert(t, ctx, w, testNode("node-2", 2))
	waitConverged(t, over, tr)
	waitConverged(t, in, tr)

	// Users and roles are not managed in process.
	if _, err := local.cli.UserList(ctx); err == nil {
		t.Error("in-process user list: no error, want the store's refusal")
	}

	w.Close()
	stop()
	<-done
	if err := local.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := agent.Get(ctx, api.SyncedKey("c1", api.KindNode)); err != nil {
		t.Fatalf("store after closing the in-process client: %v", err)
	}
}

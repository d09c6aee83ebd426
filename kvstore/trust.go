package kvstore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/clustermesh/clustermesh/pki"
)

// trustRecheck bounds how often the CA file is looked at again.
const trustRecheck = time.Second

// trustFile narrows the store's client trust to the CAs its CA file holds
// now. etcd reads its client CA pool once, at start: after a CA rotation has
// removed the previous CA from the file, certificates of that CA would still
// pass the TLS handshake until a restart, and a restart is a connection loss
// for every client. Every request and every new stream is therefore checked
// against the file's current CAs, by public key, so that a chain through a
// cross-signed copy of a trusted CA counts as that CA; streams already open
// (watches) are ended when the CA that let them in leaves the file.
//
// Widening trust needs no restart either: a rotation hands out leaves of the
// new CA with the new CA's certificate cross-signed by the previous one
// (pki.CA.CrossSign), which etcd's start-time pool accepts.
type trustFile struct {
	path    string
	cluster string
	log     *slog.Logger

	mu      sync.Mutex
	checked time.Time
	mod     time.Time
	raw     []byte
	keys    [][]byte // RawSubjectPublicKeyInfo of each trusted CA
	gen     uint64   // incremented when keys change

	// always is the public key of a CA trusted whatever the file says:
	// the store owner's in-memory CA (ownerCredential).
	always []byte

	nextStream uint64
	streams    map[uint64]openStream
}

func newTrustFile(path, cluster string, log *slog.Logger) (*trustFile, error) {
	t := &trustFile{path: path, cluster: cluster, log: log, streams: map[uint64]openStream{}}
	if err := t.reload(time.Now()); err != nil {
		return nil, fmt.Errorf("%w: cluster %s: server: CA file: %w", ErrConfig, cluster, err)
	}
	return t, nil
}

// reload re-reads the file if it changed. A file that cannot be read or
// holds no certificate leaves the previous trust in place: a Secret mount is
// replaced by a symlink swap, and a reader may catch it half way.
func (t *trustFile) reload(now time.Time) error {
	t.checked = now
	fi, err := os.Stat(t.path)
	if err != nil {
		return err
	}
	if t.keys != nil && fi.ModTime().Equal(t.mod) {
		return nil
	}
	raw, err := os.ReadFile(t.path)
	if err != nil {
		return err
	}
	if bytes.Equal(raw, t.raw) {
		t.mod = fi.ModTime()
		return nil
	}
	certs, err := pki.ParseCertificates(raw)
	if err != nil {
		return err
	}
	keys := make([][]byte, 0, len(certs))
	names := make([]string, 0, len(certs))
	for _, c := range certs {
		keys = append(keys, c.RawSubjectPublicKeyInfo)
		names = append(names, c.Subject.CommonName)
	}
	if t.keys != nil {
		t.log.Info("store trust changed", "cluster", t.cluster, "ca_file", t.path, "cas", names)
	}
	t.mod, t.raw, t.keys = fi.ModTime(), raw, keys
	t.gen++
	return nil
}

// current returns the trusted CA keys and their generation.
func (t *trustFile) current() ([][]byte, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now := time.Now(); now.Sub(t.checked) >= trustRecheck {
		if err := t.reload(now); err != nil {
			t.log.Warn("store CA file unreadable, keeping the trust it had", "cluster", t.cluster, "ca_file", t.path, "error", err)
		}
	}
	return t.keys, t.gen
}

// check returns a PermissionDenied error when the request's client
// certificate chains to none of the trusted CAs. A request without a
// verified chain is left to etcd's own authentication, which refuses it.
func (t *trustFile) check(ctx context.Context, keys [][]byte) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 {
		return nil
	}
	for _, chain := range ti.State.VerifiedChains {
		for _, c := range chain[1:] {
			if t.always != nil && bytes.Equal(c.RawSubjectPublicKeyInfo, t.always) {
				return nil
			}
			for _, k := range keys {
				if bytes.Equal(c.RawSubjectPublicKeyInfo, k) {
					return nil
				}
			}
		}
	}
	leaf := ti.State.VerifiedChains[0][0]
	t.log.Warn("request refused: client certificate of a CA no longer trusted", "cluster", t.cluster, "user", leaf.Subject.CommonName, "issuer", leaf.Issuer.CommonName)
	return status.Errorf(codes.PermissionDenied, "cluster %s: the certificate of %q is issued by %q, which this store no longer trusts (its CA was rotated): use the certificates clustermesh issued since",
		t.cluster, leaf.Subject.CommonName, leaf.Issuer.CommonName)
}

func (t *trustFile) unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		keys, _ := t.current()
		if err := t.check(ctx, keys); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// stream checks a stream when it opens and keeps it registered so that
// run can end it once trust changes: a watch opened before a rotation
// finished must not read on.
func (t *trustFile) stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		keys, gen := t.current()
		if err := t.check(ss.Context(), keys); err != nil {
			return err
		}
		ctx, cancel := context.WithCancelCause(ss.Context())
		defer cancel(nil)
		t.mu.Lock()
		t.nextStream++
		id := t.nextStream
		t.streams[id] = openStream{peer: ss.Context(), cancel: cancel}
		t.mu.Unlock()
		defer func() {
			t.mu.Lock()
			delete(t.streams, id)
			t.mu.Unlock()
		}()
		ts := &trustedStream{ServerStream: ss, ctx: ctx, cancel: cancel, trust: t}
		ts.gen.Store(gen)
		err := handler(srv, ts)
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && ss.Context().Err() == nil {
			return cause
		}
		return err
	}
}

// openStream is a stream under way: the context that carries its client's
// certificate, and how to end it.
type openStream struct {
	peer   context.Context
	cancel context.CancelCauseFunc
}

// trustedStream is a stream whose context the interceptor can end (etcd's
// watch handler returns when its stream's context is done) and whose sends
// are checked again once trust changed, so that no event leaves for a
// certificate the store stopped trusting between two rounds of run.
type trustedStream struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelCauseFunc
	trust  *trustFile
	gen    atomic.Uint64
}

func (s *trustedStream) Context() context.Context { return s.ctx }

func (s *trustedStream) SendMsg(m any) error {
	if keys, gen := s.trust.current(); gen != s.gen.Load() {
		if err := s.trust.check(s.ServerStream.Context(), keys); err != nil {
			s.cancel(err)
			return err
		}
		s.gen.Store(gen)
	}
	return s.ServerStream.SendMsg(m)
}

// run looks at the CA file every trustRecheck until ctx ends and, when trust
// changed, ends the open streams whose certificate it no longer covers.
func (t *trustFile) run(ctx context.Context) {
	tick := time.NewTicker(trustRecheck)
	defer tick.Stop()
	_, seen := t.current()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		keys, gen := t.current()
		if gen == seen {
			continue
		}
		seen = gen
		t.mu.Lock()
		open := make([]openStream, 0, len(t.streams))
		for _, s := range t.streams {
			open = append(open, s)
		}
		t.mu.Unlock()
		for _, s := range open {
			if err := t.check(s.peer, keys); err != nil {
				s.cancel(err)
			}
		}
	}
}

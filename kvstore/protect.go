package kvstore

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Store limits of the embedded etcd. Every one is explicit, so that what a
// client (in the end, a peer's certificate) can make the store hold is
// known and documented (docs/security.md).
const (
	// DefaultQuotaBytes is the space the store may use before it raises
	// its NOSPACE alarm and refuses writes.
	DefaultQuotaBytes = 2 << 30
	// DefaultMaxRequestBytes bounds one request, so one value too (the
	// writer's lease recovery batches 100 keys per transaction; objects are
	// far smaller than this).
	DefaultMaxRequestBytes = 1536 << 10
	// DefaultMaxStreams bounds the concurrent gRPC streams (watches, lease
	// keep-alives) one client connection may open.
	DefaultMaxStreams = 1024
	// DefaultAlarmCheckInterval is how often the server looks for a space
	// alarm to clear.
	DefaultAlarmCheckInterval = 10 * time.Second
)

// leaseUsers are the users that may grant leases: the cluster's own writer
// (admin) and its agents, which publish their status under a lease. etcd
// lets every authenticated user grant leases, and each lease costs the
// store memory and a persisted record: a peer reading with its remote
// certificate could fill the store without writing a single key.
var leaseUsers = []string{UserAdmin, UserAgent, userRoot}

// restrictLeaseGrant refuses LeaseGrant to users outside leaseUsers.
func restrictLeaseGrant(cluster string, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod != "/etcdserverpb.Lease/LeaseGrant" {
			return handler(ctx, req)
		}
		user := certUser(ctx)
		if !slices.Contains(leaseUsers, user) {
			log.Warn("lease grant refused", "cluster", cluster, "user", user, "reason", "user may not hold leases")
			return nil, status.Errorf(codes.PermissionDenied, "cluster %s: user %q may not grant leases", cluster, user)
		}
		return handler(ctx, req)
	}
}

// certUser is the etcd user of a request: the common name of the verified
// client certificate, as etcd itself derives it.
func certUser(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return ""
	}
	return ti.State.VerifiedChains[0][0].Subject.CommonName
}

// rootContext is a request context that etcd's in-process API takes as the
// root user.
func rootContext(ctx context.Context) context.Context { return userContext(ctx, userRoot) }

// userContext is a request context that etcd's in-process API takes as
// user: a verified TLS peer whose certificate names the user, which is how
// etcd identifies a client that authenticates with a certificate.
func userContext(ctx context.Context, user string) context.Context {
	var tlsInfo credentials.TLSInfo
	tlsInfo.State.VerifiedChains = [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: user}}}}
	ctx = peer.NewContext(ctx, &peer.Peer{AuthInfo: tlsInfo})
	return metadata.NewIncomingContext(ctx, metadata.MD{})
}

// watchAlarms clears space alarms until ctx ends: when the store raised
// NOSPACE, it compacts all history, defragments the backend and disarms
// the alarm, so that the writer can write again once space is free. If the
// live data alone exceeds the quota the alarm comes back, which the log and
// the metric show.
func (s *Server) watchAlarms(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.clearSpaceAlarm(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("clearing the store's space alarm", "cluster", s.cfg.Cluster, "error", err)
		}
	}
}

// clearSpaceAlarm does one round of watchAlarms.
func (s *Server) clearSpaceAlarm(ctx context.Context) error {
	es := s.etcd.Server
	var nospace []*pb.AlarmMember
	for _, a := range es.Alarms() {
		if a.Alarm == pb.AlarmType_NOSPACE {
			nospace = append(nospace, a)
		}
	}
	if len(nospace) == 0 {
		return nil
	}
	s.metrics.spaceAlarm(s.cfg.Cluster)
	before := es.Backend().Size()
	rctx, cancel := context.WithTimeout(rootContext(ctx), time.Minute)
	defer cancel()
	rev := es.KV().Rev()
	if _, err := es.Compact(rctx, &pb.CompactionRequest{Revision: rev, Physical: true}); err != nil && err != rpctypes.ErrCompacted {
		return fmt.Errorf("compact at revision %d: %w", rev, err)
	}
	if err := es.Backend().Defrag(); err != nil {
		return fmt.Errorf("defragment: %w", err)
	}
	for _, a := range nospace {
		if _, err := es.Alarm(rctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: a.MemberID, Alarm: a.Alarm}); err != nil {
			return fmt.Errorf("disarm NOSPACE: %w", err)
		}
	}
	s.log.Warn("store ran out of space: compacted, defragmented and disarmed",
		"cluster", s.cfg.Cluster, "revision", rev, "size_before", before, "size_after", es.Backend().Size(), "quota", s.cfg.quotaBytes())
	return nil
}

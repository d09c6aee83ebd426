package kvstore

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy/adapter"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// InProcessClient is a client of the store that calls the embedded etcd's
// API in this process (etcd's v3client way: its gRPC services' Go methods,
// through the adapters of its gRPC proxy), with no socket, TLS, HTTP/2 or
// protobuf encoding on the way. It acts as the admin user, as OwnerClient
// does: every request carries the identity etcd derives from a verified
// client certificate naming UserAdmin, so the store's auth checks it like
// any request (etcd's own v3client carries none, and a store with auth
// enabled refuses it). It is the same *Client type, used by the same
// Writer and Reader code.
//
// What it skips is what the TCP listener adds around etcd: the check of
// the client's certificate against the cluster's CA file as it is now
// (trust rotation), the refusal of lease grants to users that may not
// hold leases, and the gRPC message size limits. None of them is about
// the owner: its credential is this process's own, its user is the
// admin, and etcd still bounds each request to MaxRequestBytes and the
// store to its quota. The mesh cache writes its copies of peers' exports
// with it when the apiserver embeds the store: three passes through a
// store per copied change (the peer's watch, the copy, the agents' watch)
// of which the copy no longer pays a network client's and server's costs.
//
// It reads, writes, watches and holds leases (and so campaigns). Its
// calls to manage users and roles carry no identity and are refused:
// make those through OwnerClient. Close it before the server; closing it leaves the server
// running. Each call returns a new client.
func (s *Server) InProcessClient() *Client {
	es := s.etcd.Server
	cli := clientv3.NewCtxClient(context.Background(), clientv3.WithZapLogger(zap.NewNop()))
	cli.KV = clientv3.NewKVFromKVClient(ownerKV{adapter.KvServerToKvClient(v3rpc.NewQuotaKVServer(es))}, cli)
	// The keep-alive timeout is v3client's: the server is in this process.
	cli.Lease = clientv3.NewLeaseFromLeaseClient(ownerLease{adapter.LeaseServerToLeaseClient(v3rpc.NewQuotaLeaseServer(es))}, cli, time.Second)
	cli.Watcher = clientv3.NewWatchFromWatchClient(ownerWatch{adapter.WatchServerToWatchClient(v3rpc.NewWatchServer(es))}, cli)
	// Wired without an identity, so that a call fails (the store's auth
	// refuses it) rather than panics.
	cli.Auth = clientv3.NewAuthFromAuthClient(adapter.AuthServerToAuthClient(v3rpc.NewAuthServer(es)), cli)
	return &Client{cfg: Config{Endpoints: []string{"in-process:" + s.cfg.Cluster}}, cli: cli, inProcess: true}
}

// ownerContext is a request context that etcd's API takes as the admin
// user (see rootContext).
func ownerContext(ctx context.Context) context.Context { return userContext(ctx, UserAdmin) }

// ownerKV, ownerLease and ownerWatch call the in-process API as the owner.
// A method added to etcd's interfaces and not listed here carries no
// identity: the store refuses it.
type ownerKV struct{ pb.KVClient }

func (o ownerKV) Range(ctx context.Context, in *pb.RangeRequest, opts ...grpc.CallOption) (*pb.RangeResponse, error) {
	return o.KVClient.Range(ownerContext(ctx), in, opts...)
}

func (o ownerKV) Put(ctx context.Context, in *pb.PutRequest, opts ...grpc.CallOption) (*pb.PutResponse, error) {
	return o.KVClient.Put(ownerContext(ctx), in, opts...)
}

func (o ownerKV) DeleteRange(ctx context.Context, in *pb.DeleteRangeRequest, opts ...grpc.CallOption) (*pb.DeleteRangeResponse, error) {
	return o.KVClient.DeleteRange(ownerContext(ctx), in, opts...)
}

func (o ownerKV) Txn(ctx context.Context, in *pb.TxnRequest, opts ...grpc.CallOption) (*pb.TxnResponse, error) {
	return o.KVClient.Txn(ownerContext(ctx), in, opts...)
}

func (o ownerKV) Compact(ctx context.Context, in *pb.CompactionRequest, opts ...grpc.CallOption) (*pb.CompactionResponse, error) {
	return o.KVClient.Compact(ownerContext(ctx), in, opts...)
}

type ownerLease struct{ pb.LeaseClient }

func (o ownerLease) LeaseGrant(ctx context.Context, in *pb.LeaseGrantRequest, opts ...grpc.CallOption) (*pb.LeaseGrantResponse, error) {
	return o.LeaseClient.LeaseGrant(ownerContext(ctx), in, opts...)
}

func (o ownerLease) LeaseRevoke(ctx context.Context, in *pb.LeaseRevokeRequest, opts ...grpc.CallOption) (*pb.LeaseRevokeResponse, error) {
	return o.LeaseClient.LeaseRevoke(ownerContext(ctx), in, opts...)
}

func (o ownerLease) LeaseKeepAlive(ctx context.Context, opts ...grpc.CallOption) (pb.Lease_LeaseKeepAliveClient, error) {
	return o.LeaseClient.LeaseKeepAlive(ownerContext(ctx), opts...)
}

func (o ownerLease) LeaseTimeToLive(ctx context.Context, in *pb.LeaseTimeToLiveRequest, opts ...grpc.CallOption) (*pb.LeaseTimeToLiveResponse, error) {
	return o.LeaseClient.LeaseTimeToLive(ownerContext(ctx), in, opts...)
}

func (o ownerLease) LeaseLeases(ctx context.Context, in *pb.LeaseLeasesRequest, opts ...grpc.CallOption) (*pb.LeaseLeasesResponse, error) {
	return o.LeaseClient.LeaseLeases(ownerContext(ctx), in, opts...)
}

type ownerWatch struct{ pb.WatchClient }

func (o ownerWatch) Watch(ctx context.Context, opts ...grpc.CallOption) (pb.Watch_WatchClient, error) {
	return o.WatchClient.Watch(ownerContext(ctx), opts...)
}

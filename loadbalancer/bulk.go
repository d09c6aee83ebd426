package loadbalancer

import "context"

// BulkDatapath is a Datapath that programs many services in one call, far
// cheaper than one call each when a node starts from empty maps or resyncs
// everything. It is optional: callers check for it with a type assertion.
type BulkDatapath interface {
	Datapath
	// UpsertServices programs every service; it returns the error of each
	// frontend it refused (nil: all programmed). The others are
	// programmed as by UpsertService.
	UpsertServices(ctx context.Context, svcs []Service) map[Frontend]error
}

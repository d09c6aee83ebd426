package agent

import (
	"context"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// NoopDatapath accepts every service and programs nothing: for control-plane
// only runs (--datapath=none), where status and metrics still show the
// merged services.
type NoopDatapath struct{}

var _ loadbalancer.Datapath = NoopDatapath{}

// UpsertService implements loadbalancer.Datapath.
func (NoopDatapath) UpsertService(context.Context, loadbalancer.Service) error { return nil }

// DeleteService implements loadbalancer.Datapath.
func (NoopDatapath) DeleteService(context.Context, loadbalancer.Frontend) error { return nil }

// SetNodeHealth implements loadbalancer.Datapath.
func (NoopDatapath) SetNodeHealth(context.Context, loadbalancer.NodeRef, bool) error { return nil }

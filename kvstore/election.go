package kvstore

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is won by Campaign: until it is lost or resigned, this
// candidate is the only one of its election that holds it.
type Leadership struct {
	sess *concurrency.Session
	el   *concurrency.Election
}

// Campaign blocks until the candidate id leads the election named by prefix
// (or ctx ends, returning ctx's error). Leadership is held by a session
// lease of ttl (whole seconds, at least etcd's minimum): a leader that dies
// without resigning blocks the others that long, and one that cannot reach
// the store for that long loses it (Done is closed).
func (c *Client) Campaign(ctx context.Context, prefix, id string, ttl time.Duration) (*Leadership, error) {
	secs := int((ttl + time.Second - 1) / time.Second)
	sess, err := concurrency.NewSession(c.cli, concurrency.WithTTL(secs), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("etcd %v: election %s: session: %w", c.cfg.Endpoints, prefix, err)
	}
	el := concurrency.NewElection(sess, prefix)
	if err := el.Campaign(ctx, id); err != nil {
		sess.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("etcd %v: election %s: campaign: %w", c.cfg.Endpoints, prefix, err)
	}
	return &Leadership{sess: sess, el: el}, nil
}

// Done is closed when leadership is lost: the session lease expired or the
// Campaign context ended.
func (l *Leadership) Done() <-chan struct{} { return l.sess.Done() }

// Resign gives leadership up so that another candidate takes over at once,
// and ends the session.
func (l *Leadership) Resign(ctx context.Context) error {
	err := l.el.Resign(ctx)
	l.sess.Close()
	if err != nil {
		return fmt.Errorf("election: resign: %w", err)
	}
	return nil
}

package kvstore

import "errors"

// Sentinel errors of the package. Errors returned by this package wrap one of
// them, or an etcd or TLS error, with context naming the cluster and key.
var (
	// ErrConfig is wrapped by errors about a connection or server
	// configuration (a missing field, an unreadable file).
	ErrConfig = errors.New("invalid kvstore configuration")
	// ErrNotOwned is returned when a Writer is asked to write a key outside
	// its cluster's prefix.
	ErrNotOwned = errors.New("key not owned by this writer")
	// ErrInvalidKind is returned for a kind an operation does not apply to.
	ErrInvalidKind = errors.New("invalid kind for this operation")
	// ErrClosed is returned by a Writer after Close.
	ErrClosed = errors.New("closed")
	// ErrServerMismatch is wrapped when a store's server certificate is not
	// the one its connection pins (Config.ServerName).
	ErrServerMismatch = errors.New("server certificate mismatch")
	// ErrQuota is wrapped by the EventErrors of keys a Reader refused
	// because a MaxKeys or MaxBytes bound was reached.
	ErrQuota = errors.New("store quota exceeded")
	// ErrUnreachable wraps the failure to reach the store within the dial
	// timeout.
	ErrUnreachable = errors.New("store unreachable")
)

// Package api is the versioned wire schema of the global state store.
//
// Every value a cluster writes into its etcd is one of the types in this
// package: the cluster's own config, its nodes, services, endpoint slices,
// identities and ipcache entries. Each type knows its key (see keys.go), how
// to validate itself, and how to encode itself. Readers in other clusters
// decode with the same package, so the key layout and the encoding are the
// contract between clusters and are versioned together: the "v1" in
// KeyPrefix and the SchemaVersion carried in every value.
//
// Validation errors name the field and the offending value, so that a bad
// object written by a misbehaving peer can be reported precisely and skipped
// without affecting anything else.
package api

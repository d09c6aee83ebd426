package api

import "fmt"

// Identities are 24-bit numbers: the cluster ID in the high bits and a
// cluster-local number in the low bits, so that identities allocated by
// different clusters never collide. A mesh of 255 clusters leaves 16 bits per
// cluster; a mesh of 511 leaves 15.
const identityBits = 24

func localIdentityBits(maxClusterID uint32) uint {
	if maxClusterID == ExtendedMaxClusterID {
		return identityBits - 9
	}
	return identityBits - 8
}

// MaxLocalIdentity is the largest cluster-local identity number for a mesh
// with the given cluster ID limit.
func MaxLocalIdentity(maxClusterID uint32) uint32 {
	return 1<<localIdentityBits(maxClusterID) - 1
}

// MakeIdentity combines a cluster ID and a cluster-local number (1..
// MaxLocalIdentity) into a mesh-wide identity.
func MakeIdentity(clusterID, local, maxClusterID uint32) (uint32, error) {
	if err := ValidateClusterID(clusterID, maxClusterID); err != nil {
		return 0, err
	}
	if local == 0 || local > MaxLocalIdentity(maxClusterID) {
		return 0, invalidf("local identity %d: must be within 1..%d", local, MaxLocalIdentity(maxClusterID))
	}
	return clusterID<<localIdentityBits(maxClusterID) | local, nil
}

// IdentityClusterID returns the cluster ID carried in an identity.
func IdentityClusterID(id, maxClusterID uint32) uint32 {
	return id >> localIdentityBits(maxClusterID)
}

// String renders an identity as cluster-ID/local, the form logs use.
func (i *Identity) String() string { return fmt.Sprintf("%s/%d", i.Cluster, i.ID) }

package api

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// keyRef is any typed key: it builds its key, and parseRef parses it back.
type keyRef interface{ Key() string }

// parseRef parses key with the typed parser of like's type.
func parseRef(like keyRef, key string) (keyRef, error) {
	switch like.(type) {
	case ClusterRef:
		return ParseClusterKey(key)
	case NodeRef:
		return ParseNodeKey(key)
	case ServiceRef:
		return ParseServiceKey(key)
	case EndpointSliceRef:
		return ParseEndpointSliceKey(key)
	case IdentityRef:
		return ParseIdentityKey(key)
	case IPCacheRef:
		return ParseIPCacheKey(key)
	case SyncedRef:
		return ParseSyncedKey(key)
	case AgentStatusRef:
		return ParseAgentStatusKey(key)
	case PolicyRef:
		return ParsePolicyKey(key)
	}
	panic("no parser for " + reflect.TypeOf(like).String())
}

func TestParseKeysInvertConstructors(t *testing.T) {
	long := strings.Repeat("n", 253)
	refs := []keyRef{
		ClusterRef{"c1"},
		ClusterRef{strings.Repeat("a", MaxClusterNameLen)},
		NodeRef{"c1", "node-1"},
		NodeRef{"c-2", long},
		ServiceRef{"c1", "default", "echo"},
		ServiceRef{"c1", "kube-system", "x.y_z"},
		EndpointSliceRef{"c1", "default", "echo", "echo-abcde"},
		IdentityRef{"c1", 1},
		IdentityRef{"c1", 0xffffffff},
		IPCacheRef{"c1", netip.MustParseAddr("10.1.2.3")},
		IPCacheRef{"c1", netip.MustParseAddr("fd00::1")},
		IPCacheRef{"c1", netip.MustParseAddr("::ffff:10.1.2.3")},
		SyncedRef{"c1", KindNode},
		SyncedRef{"c1", KindIPCache},
		AgentStatusRef{"c1", "node-1"},
		SyncedRef{"c1", KindPolicy},
		PolicyRef{"c1", PolicyKindNetworkPolicy, "shop", "api-from-web"},
		PolicyRef{"c1", PolicyKindCNP, "kube-system", long},
		PolicyRef{"c1", PolicyKindCCNP, "", "deny-world"},
	}
	for _, ref := range refs {
		t.Run(ref.Key(), func(t *testing.T) {
			got, err := parseRef(ref, ref.Key())
			if err != nil {
				t.Fatal(err)
			}
			if got != ref {
				t.Errorf("parsed %+v, want %+v", got, ref)
			}
			// ParseKey agrees with the typed parser on kind and cluster.
			pk, err := ParseKey(ref.Key())
			if err != nil || pk.Key != ref.Key() || reflect.ValueOf(ref).Field(0).String() != pk.Cluster {
				t.Errorf("ParseKey = %+v, %v", pk, err)
			}
		})
	}
}

func TestParseKeysRefuseMalformed(t *testing.T) {
	tests := []struct {
		like   keyRef
		key    string
		reason string
	}{
		{ClusterRef{}, "clustermesh/v1/cluster/", "cluster name is empty"},
		{ClusterRef{}, "clustermesh/v1/cluster/C1", "lower-case DNS label"},
		{ClusterRef{}, "clustermesh/v1/cluster/c1/extra", "2 segments"},
		{ClusterRef{}, "clustermesh/v1/nodes/c1/n1", "not under"},
		{ClusterRef{}, "clustermesh/v2/cluster/c1", "not under"},
		{NodeRef{}, "clustermesh/v1/nodes/c1", "1 segments"},
		{NodeRef{}, "clustermesh/v1/nodes/c1/", "node name is empty"},
		{NodeRef{}, "clustermesh/v1/nodes/c1/a/b", "3 segments"},
		{NodeRef{}, "clustermesh/v1/nodes/c1/a b", "not allowed"},
		{NodeRef{}, "clustermesh/v1/nodes/c1/" + strings.Repeat("n", 254), "longer than 253"},
		{NodeRef{}, "clustermesh/v1/nodes//n1", "cluster name is empty"},
		{ServiceRef{}, "clustermesh/v1/services/c1/ns", "2 segments"},
		{ServiceRef{}, "clustermesh/v1/services/c1//name", "service namespace is empty"},
		{ServiceRef{}, "clustermesh/v1/services/c1/ns/", "service name is empty"},
		{EndpointSliceRef{}, "clustermesh/v1/endpoints/c1/ns/svc", "3 segments"},
		{EndpointSliceRef{}, "clustermesh/v1/endpoints/c1/ns/svc/a/b", "5 segments"},
		{IdentityRef{}, "clustermesh/v1/identities/c1/0", "non-zero"},
		{IdentityRef{}, "clustermesh/v1/identities/c1/007", "canonical"},
		{IdentityRef{}, "clustermesh/v1/identities/c1/+7", "32-bit"},
		{IdentityRef{}, "clustermesh/v1/identities/c1/4294967296", "32-bit"},
		{IdentityRef{}, "clustermesh/v1/identities/c1/x", "32-bit"},
		{IPCacheRef{}, "clustermesh/v1/ipcache/c1/10.1.2", "too short"},
		{IPCacheRef{}, "clustermesh/v1/ipcache/c1/FD00::1", "canonical"},
		{IPCacheRef{}, "clustermesh/v1/ipcache/c1/fd00:0::1", "canonical"},
		{IPCacheRef{}, "clustermesh/v1/ipcache/c1/fe80::1%eth0", "zone"},
		{SyncedRef{}, "clustermesh/v1/synced/c1/agents", "no synced canary"},
		{SyncedRef{}, "clustermesh/v1/synced/c1", "1 segments"},
		{AgentStatusRef{}, "clustermesh/v1/agents/c1", "1 segments"},
		{AgentStatusRef{}, "clustermesh/v1/agents/c1/n1/x", "3 segments"},
		{AgentStatusRef{}, "clustermesh/v1/services/c1/n1", "not under"},
		{PolicyRef{}, "clustermesh/v1/policies/c1/NetworkPolicy/ns", "3 segments"},
		{PolicyRef{}, "clustermesh/v1/policies/c1/NetworkPolicy/ns/p/x", "5 segments"},
		{PolicyRef{}, "clustermesh/v1/policies/c1/Ingress/ns/p", `policy kind "Ingress"`},
		{PolicyRef{}, "clustermesh/v1/policies/c1/NetworkPolicy//p", "policy namespace is empty"},
		{PolicyRef{}, "clustermesh/v1/policies/c1/NetworkPolicy/ns/", "policy name is empty"},
		{PolicyRef{}, "clustermesh/v1/policies/c1/NetworkPolicy/_/p", "is namespaced"},
		{PolicyRef{}, "clustermesh/v1/policies/c1/CiliumClusterwideNetworkPolicy/ns/p", "is cluster-wide"},
		{PolicyRef{}, "clustermesh/v1/policies/C1/NetworkPolicy/ns/p", "lower-case DNS label"},
		{SyncedRef{}, "clustermesh/v1/synced/c1/cluster", "no synced canary"},
	}
	for _, tt := range tests {
		t.Run(reflect.TypeOf(tt.like).Name()+"/"+tt.key, func(t *testing.T) {
			got, err := parseRef(tt.like, tt.key)
			if err == nil {
				t.Fatalf("accepted as %+v", got)
			}
			if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), tt.key) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("err = %v, want ErrInvalidKey naming the key and %q", err, tt.reason)
			}
		})
	}
}

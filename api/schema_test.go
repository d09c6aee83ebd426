package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// The tests in this file tie schema.proto to the hand-written codec: the
// .proto is compiled at test time and every message is round-tripped both
// ways through dynamicpb, which knows nothing but the descriptor. A field
// added on one side only, a renumbered field or a changed wire type fails
// them.

// schemaMessage pairs one message of schema.proto with the Go type that
// carries it, field by field.
type schemaMessage struct {
	name protoreflect.Name
	// goType is nil for the entry messages that encode Go maps.
	goType reflect.Type
	// fields maps each proto field name to its Go field name. A top-level
	// message's schema_version has no Go field unless listed.
	fields map[protoreflect.Name]string
}

// schemaMessages lists every message of schema.proto. A message used by two
// Go types (Port) is listed once per type.
var schemaMessages = []schemaMessage{
	{"StringPair", nil, map[protoreflect.Name]string{"key": "", "value": ""}},
	{"Cluster", reflect.TypeFor[Cluster](), map[protoreflect.Name]string{
		"name": "Name", "id": "ID", "max_cluster_id": "MaxClusterID", "pod_cidrs": "PodCIDRs",
		"capabilities": "Capabilities", "route_reflector": "RouteReflector", "asn": "ASN"}},
	{"Node", reflect.TypeFor[Node](), map[protoreflect.Name]string{
		"cluster": "Cluster", "name": "Name", "addresses": "Addresses", "pod_cidrs": "PodCIDRs", "zone": "Zone",
		"bgp_address": "BGPAddress", "asn": "ASN", "gossip_address": "GossipAddress"}},
	{"Port", reflect.TypeFor[ServicePort](), map[protoreflect.Name]string{"name": "Name", "port": "Port", "protocol": "Protocol"}},
	{"Port", reflect.TypeFor[EndpointPort](), map[protoreflect.Name]string{"name": "Name", "port": "Port", "protocol": "Protocol"}},
	{"Service", reflect.TypeFor[Service](), map[protoreflect.Name]string{
		"cluster": "Cluster", "cluster_id": "ClusterID", "namespace": "Namespace", "name": "Name",
		"cluster_ips": "ClusterIPs", "ports": "Ports", "global": "Global", "shared": "Shared",
		"affinity": "Affinity", "min_local_backends": "MinLocalBackends", "labels": "Labels",
		"session_affinity_timeout": "SessionAffinityTimeout", "internal_traffic_local": "InternalTrafficLocal", "prefer_close": "PreferClose",
		"service_export": "ServiceExport", "export_created_unix_nano": "ExportCreated", "headless": "Headless", "clusterset_ips": "ClusterSetIPs"}},
	{"Endpoint", reflect.TypeFor[Endpoint](), map[protoreflect.Name]string{
		"addresses": "Addresses", "node_name": "NodeName", "zone": "Zone", "ready": "Ready",
		"serving": "Serving", "terminating": "Terminating", "hostname": "Hostname"}},
	{"EndpointSlice", reflect.TypeFor[EndpointSlice](), map[protoreflect.Name]string{
		"cluster": "Cluster", "namespace": "Namespace", "service": "Service", "name": "Name",
		"ports": "Ports", "endpoints": "Endpoints"}},
	{"Identity", reflect.TypeFor[Identity](), map[protoreflect.Name]string{
		"cluster": "Cluster", "id": "ID", "namespace": "Namespace", "labels": "Labels"}},
	{"IPCacheEntry", reflect.TypeFor[IPCacheEntry](), map[protoreflect.Name]string{
		"cluster": "Cluster", "ip": "IP", "identity": "Identity", "node": "Node", "host_ip": "HostIP",
		"namespace": "Namespace", "pod": "Pod"}},
	{"StringCount", nil, map[protoreflect.Name]string{"key": "", "value": ""}},
	{"AgentStatus", reflect.TypeFor[AgentStatus](), map[protoreflect.Name]string{
		"schema_version": "SchemaVersion", "cluster": "Cluster", "node": "Node", "datapath": "Datapath",
		"frontends": "Frontends", "updated_unix_nano": "Updated", "clusters": "Clusters", "bgp": "BGP", "health": "Health"}},
	{"AgentCluster", reflect.TypeFor[AgentCluster](), map[protoreflect.Name]string{
		"name": "Name", "id": "ID", "local": "Local", "state": "State", "connected": "Connected", "synced": "Synced",
		"synced_kinds": "SyncedKinds", "last_error": "LastError", "last_error_unix_nano": "LastErrorTime",
		"objects": "Objects", "invalid_objects": "InvalidObjects", "refused_objects": "RefusedObjects",
		"last_refusal": "LastRefusal", "events": "Events", "since_unix_nano": "Since", "routes": "Routes"}},
	{"AgentBGP", reflect.TypeFor[AgentBGP](), map[protoreflect.Name]string{
		"state": "State", "error": "Error", "asn": "ASN", "router_id": "RouterID", "announced": "Announced",
		"sessions": "Sessions", "installed": "Installed", "failed": "Failed", "refused": "Refused",
		"pending_removal": "PendingRemoval", "stale_routes": "StaleRoutes", "install_errors": "InstallErrors"}},
	{"AgentBGPSession", reflect.TypeFor[AgentBGPSession](), map[protoreflect.Name]string{
		"peer": "Peer", "address": "Address", "asn": "ASN", "state": "State", "established": "Established",
		"since_unix_nano": "Since", "cut_off": "CutOff", "received": "Received", "accepted": "Accepted",
		"installed": "Installed", "refused": "Refused", "advertised": "Advertised"}},
	{"AgentBGPRefusal", reflect.TypeFor[AgentBGPRefusal](), map[protoreflect.Name]string{
		"prefix": "Prefix", "next_hop": "NextHop", "peer": "Peer", "reason": "Reason", "conflict": "Conflict"}},
	{"AgentHealth", reflect.TypeFor[AgentHealth](), map[protoreflect.Name]string{
		"state": "State", "error": "Error", "self": "Self", "members": "Members", "alive": "Alive",
		"suspect": "Suspect", "dead": "Dead", "left": "Left", "unhealthy": "Unhealthy", "held": "Held",
		"health_score": "HealthScore", "isolated": "Isolated", "isolation_reason": "IsolationReason",
		"last_detection_seconds": "LastDetectionSeconds", "max_detection_seconds": "MaxDetectionSeconds",
		"member_list": "MemberList", "refused": "Refused"}},
	{"AgentHealthRefusal", reflect.TypeFor[AgentHealthRefusal](), map[protoreflect.Name]string{
		"cluster": "Cluster", "node": "Node", "address": "Address", "owner": "Owner", "field": "Field",
		"reason": "Reason", "count": "Count", "last_unix_nano": "Last"}},
	{"AgentHealthMember", reflect.TypeFor[AgentHealthMember](), map[protoreflect.Name]string{
		"name": "Name", "state": "State", "healthy": "Healthy", "held": "Held", "since_unix_nano": "Since"}},
	{"Policy", reflect.TypeFor[Policy](), map[protoreflect.Name]string{
		"cluster": "Cluster", "kind": "Kind", "namespace": "Namespace", "name": "Name", "spec": "Spec"}},
}

func messageFor(t reflect.Type) (schemaMessage, bool) {
	for _, m := range schemaMessages {
		if m.goType == t {
			return m, true
		}
	}
	return schemaMessage{}, false
}

// compileSchema compiles schema.proto with protocompile.
func compileSchema(t testing.TB) protoreflect.FileDescriptor {
	t.Helper()
	c := protocompile.Compiler{Resolver: &protocompile.SourceResolver{ImportPaths: []string{"."}}}
	files, err := c.Compile(context.Background(), "schema.proto")
	if err != nil {
		t.Fatalf("compile schema.proto: %v", err)
	}
	return files[0]
}

// TestSchemaFields fails when schema.proto and the Go types disagree on the
// set of messages or fields.
func TestSchemaFields(t *testing.T) {
	fd := compileSchema(t)
	msgs := fd.Messages()
	for i := range msgs.Len() {
		md := msgs.Get(i)
		if !slices.ContainsFunc(schemaMessages, func(m schemaMessage) bool { return m.name == md.Name() }) {
			t.Errorf("schema.proto message %s has no Go type in schemaMessages", md.Name())
		}
	}
	for _, m := range schemaMessages {
		md := msgs.ByName(m.name)
		label := string(m.name)
		if m.goType != nil {
			label += " (" + m.goType.Name() + ")"
		}
		t.Run(label, func(t *testing.T) {
			if md == nil {
				t.Fatalf("schema.proto has no message %s", m.name)
			}
			fields := md.Fields()
			for i := range fields.Len() {
				f := fields.Get(i)
				if _, ok := m.fields[f.Name()]; !ok && !(f.Name() == "schema_version" && f.Number() == fieldVersion) {
					t.Errorf("field %s = %d of schema.proto has no Go field", f.Name(), f.Number())
				}
			}
			if f := fields.ByNumber(fieldVersion); f != nil && f.Name() == "schema_version" && f.Kind() != protoreflect.Uint32Kind {
				t.Errorf("schema_version is %s, want uint32", f.Kind())
			}
			for pname, gname := range m.fields {
				if fields.ByName(pname) == nil {
					t.Errorf("Go field %s maps to %s, which schema.proto lacks", gname, pname)
				}
			}
			if m.goType == nil {
				return
			}
			mapped := map[string]bool{}
			for _, gname := range m.fields {
				if mapped[gname] {
					t.Errorf("Go field %s is mapped twice", gname)
				}
				mapped[gname] = true
				if _, ok := m.goType.FieldByName(gname); !ok {
					t.Errorf("Go type %s has no field %s", m.goType, gname)
				}
			}
			for sf := range m.goType.Fields() {
				if sf.IsExported() && !mapped[sf.Name] {
					t.Errorf("Go field %s.%s has no field in schema.proto", m.goType.Name(), sf.Name)
				}
			}
		})
	}
}

// codecObject is a value with both halves of the hand-written codec.
type codecObject interface {
	Object
	Unmarshal([]byte) error
}

// schemaSamples are objects exercising every field of every message, with
// edge values: IPv6, extreme numbers, empty repeated elements, non-ASCII
// text.
func schemaSamples() []codecObject {
	objs := sampleObjects()
	objs = append(objs,
		&Cluster{Name: "c-511", ID: 511, MaxClusterID: 511, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("0.0.0.0/0")},
			Capabilities: []string{"", "bgp", "ünïcode"}, RouteReflector: netip.MustParseAddrPort("[fd00::1]:65535"), ASN: math.MaxUint32},
		&Node{Cluster: "c1", Name: "n2", Addresses: []netip.Addr{netip.MustParseAddr("fd00::1")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:1::/128"), netip.MustParsePrefix("10.0.0.1/32")}, Zone: "zöne",
			BGPAddress: netip.MustParseAddr("fd00::1"), ASN: 1, GossipAddress: netip.MustParseAddrPort("10.0.0.1:1")},
		&Service{Cluster: "c1", ClusterID: math.MaxUint32, Namespace: "kube-system", Name: "dns",
			ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00::a"), netip.MustParseAddr("10.96.0.1")},
			Ports:      []ServicePort{{Port: 65535, Protocol: ProtocolUDP}, {Name: "x", Port: 1, Protocol: ProtocolTCP}},
			Affinity:   AffinityRemote, MinLocalBackends: math.MaxUint32, Labels: map[string]string{"a/b": "", "k": "vä"},
			SessionAffinityTimeout: 86400, InternalTrafficLocal: true, PreferClose: true},
		&Service{Cluster: "c2", Namespace: "shop", Name: "db", Headless: true, ServiceExport: true,
			ExportCreated: time.Unix(1767225600, 5).UTC(), ClusterSetIPs: []netip.Addr{netip.MustParseAddr("fd00::c"), netip.MustParseAddr("10.96.0.2")}},
		&EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "svc", Name: "svc-1",
			Endpoints: []Endpoint{{Addresses: []netip.Addr{netip.MustParseAddr("fd00::5"), netip.MustParseAddr("10.0.0.5")}, Terminating: true, Serving: true, Hostname: "web-0"}}},
		&Identity{Cluster: "c1", ID: math.MaxUint32, Namespace: "ns"},
		&IPCacheEntry{Cluster: "c1", IP: netip.MustParseAddr("fd00::5"), Identity: math.MaxUint32, HostIP: netip.MustParseAddr("fd00::1")},
		sampleAgentStatus(),
		// Sections present but empty, a cluster with nothing but its name,
		// times before the epoch and at the end of the wire's range.
		&AgentStatus{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n2",
			Updated:  time.Date(1960, 1, 1, 0, 0, 0, 1, time.UTC),
			Clusters: []AgentCluster{{Name: "c3"}, {Name: "c4", Since: time.Unix(0, math.MaxInt64).UTC(), Objects: map[string]int{"nodes": 0}}},
			BGP:      &AgentBGP{}, Health: &AgentHealth{MemberList: []AgentHealthMember{{}}}},
		// A cluster-wide policy (no namespace) whose JSON is not ASCII.
		&Policy{Cluster: "c1", Kind: PolicyKindCCNP, Name: "deny-world",
			Spec: []byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"deny-world"},"spec":{"description":"wörld"}}`)},
	)
	return objs
}

// sampleAgentStatus sets every field of an agent status.
func sampleAgentStatus() *AgentStatus {
	t0 := time.Date(2026, 12, 3, 6, 30, 0, 123456789, time.UTC)
	return &AgentStatus{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1", Datapath: "bpf", Frontends: 1 << 40, Updated: t0,
		Clusters: []AgentCluster{
			{Name: "c1", ID: 1, Local: true, State: AgentStateConnected, Connected: true, Synced: true,
				SyncedKinds: []string{"nodes", "services"}, Objects: map[string]int{"nodes": 3, "services": 12}, Events: math.MaxUint64, Since: t0, Routes: 2},
			{Name: "c2", ID: 511, State: AgentStateRefused, LastError: "cluster ID 2 is already used by cluster c3", LastErrorTime: &t0,
				InvalidObjects: 4, RefusedObjects: 5, LastRefusal: "c2 clustermesh/v1/nodes/c2/n1 pod_cidrs: outside the cluster's pod CIDRs", Since: t0},
		},
		BGP: &AgentBGP{State: SectionRunning, Error: "dial: refused", ASN: 65001, RouterID: netip.MustParseAddr("10.0.0.1"),
			Announced: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24"), netip.MustParsePrefix("fd00:1::/64")},
			Sessions: []AgentBGPSession{{Peer: "c1/reflector", Address: netip.MustParseAddr("fd00::250"), ASN: math.MaxUint32, State: "established",
				Established: true, Since: t0, CutOff: "max prefixes", Received: 4, Accepted: 3, Installed: 2, Refused: 1, Advertised: 1}},
			Installed: 2, Failed: 1,
			Refused: []AgentBGPRefusal{{Prefix: netip.MustParsePrefix("10.1.1.0/25"), NextHop: netip.MustParseAddr("10.0.0.250"), Peer: "10.0.0.250",
				Reason: "overlaps-local-pod-cidr", Conflict: netip.MustParsePrefix("10.1.1.0/24")}},
			PendingRemoval: 6, StaleRoutes: 7, InstallErrors: 8},
		Health: &AgentHealth{State: SectionFailed, Error: "bind: address in use", Self: "c1/n1", Members: 10, Alive: 6, Suspect: 1, Dead: 2, Left: 1,
			Unhealthy: 2, Held: 1, HealthScore: 3, Isolated: true, IsolationReason: "every peer suspect",
			LastDetectionSeconds: 0.4123, MaxDetectionSeconds: 1e-9,
			MemberList: []AgentHealthMember{{Name: "c2/n1", State: "dead", Healthy: false, Held: true, Since: t0}, {Name: "c2/n2", State: "alive", Healthy: true}},
			Refused: []AgentHealthRefusal{{Cluster: "c1", Node: "n2", Address: netip.MustParseAddrPort("[fd00::9]:7946"), Owner: "c1/n3",
				Field: "address", Reason: "address_mismatch", Count: math.MaxUint64, Last: t0}}},
	}
}

// TestSchemaRoundTrip round-trips every sample both ways: hand-encoded bytes
// read by dynamicpb equal the sample converted field by field, and dynamicpb
// bytes of that conversion read by the hand-written decoder equal the sample.
// It also checks that the samples set every field of every message at least
// once, so no field escapes the comparison.
func TestSchemaRoundTrip(t *testing.T) {
	fd := compileSchema(t)
	populated := map[protoreflect.FullName]bool{}
	for i, obj := range schemaSamples() {
		typ := reflect.TypeOf(obj).Elem()
		sm, ok := messageFor(typ)
		if !ok {
			t.Fatalf("no schema message for %s", typ)
		}
		md := fd.Messages().ByName(sm.name)
		if md == nil {
			t.Fatalf("schema.proto has no message %s", sm.name)
		}
		t.Run(fmt.Sprintf("%s/%d", typ.Name(), i), func(t *testing.T) {
			want := dynamicpb.NewMessage(md)
			toDynamic(t, reflect.ValueOf(obj).Elem(), want)
			markPopulated(want, populated)

			// Hand-encoded → dynamicpb.
			b, err := obj.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got := dynamicpb.NewMessage(md)
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatalf("dynamicpb cannot read the hand-encoded bytes: %v", err)
			}
			if u := unknownFields(got); u != "" {
				t.Errorf("hand-encoded bytes carry fields schema.proto does not declare (as declared): %s", u)
			}
			compareDynamic(t, got, want)

			// dynamicpb-encoded → hand-decoded.
			wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			back := reflect.New(typ).Interface().(codecObject)
			if err := back.Unmarshal(wire); err != nil {
				t.Fatalf("hand-written decoder cannot read dynamicpb bytes: %v", err)
			}
			if !reflect.DeepEqual(back, obj) {
				t.Errorf("dynamicpb → hand-decoded:\n got %+v\nwant %+v", back, obj)
			}
			// The conversion itself is symmetric, so the comparisons above
			// compare like with like.
			conv := reflect.New(typ)
			fromDynamic(t, want, conv.Elem())
			if !reflect.DeepEqual(conv.Interface(), obj) {
				t.Errorf("test conversion is not symmetric:\n got %+v\nwant %+v", conv.Interface(), obj)
			}
		})
	}
	msgs := fd.Messages()
	for i := range msgs.Len() {
		md := msgs.Get(i)
		fields := md.Fields()
		for j := range fields.Len() {
			if f := fields.Get(j); !populated[f.FullName()] {
				t.Errorf("no sample sets %s: add one to schemaSamples", f.FullName())
			}
		}
	}
}

// TestSchemaDecodeRefuses checks values dynamicpb can write but the Go types
// cannot hold are refused, not truncated.
func TestSchemaDecodeRefuses(t *testing.T) {
	fd := compileSchema(t)
	svc := fd.Messages().ByName("Service")
	port := fd.Messages().ByName("Port")
	tests := []struct {
		name string
		fill func(m *dynamicpb.Message)
	}{
		{"port above 65535", func(m *dynamicpb.Message) {
			p := dynamicpb.NewMessage(port)
			p.Set(port.Fields().ByName("port"), protoreflect.ValueOfUint32(65536))
			m.Mutable(svc.Fields().ByName("ports")).List().Append(protoreflect.ValueOfMessage(p))
		}},
		{"cluster IP of 5 bytes", func(m *dynamicpb.Message) {
			m.Mutable(svc.Fields().ByName("cluster_ips")).List().Append(protoreflect.ValueOfBytes([]byte{1, 2, 3, 4, 5}))
		}},
		{"newer schema", func(m *dynamicpb.Message) {
			m.Set(svc.Fields().ByName("schema_version"), protoreflect.ValueOfUint32(SchemaVersion+1))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := dynamicpb.NewMessage(svc)
			m.Set(svc.Fields().ByName("schema_version"), protoreflect.ValueOfUint32(SchemaVersion))
			m.Set(svc.Fields().ByName("name"), protoreflect.ValueOfString("x"))
			tt.fill(m)
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var s Service
			if err := s.Unmarshal(b); err == nil {
				t.Fatalf("decoded %+v", s)
			}
		})
	}
}

func markPopulated(m protoreflect.Message, seen map[protoreflect.FullName]bool) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		seen[fd.FullName()] = true
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			for i := range v.List().Len() {
				markPopulated(v.List().Get(i).Message(), seen)
			}
		case fd.Kind() == protoreflect.MessageKind:
			markPopulated(v.Message(), seen)
		}
		return true
	})
}

// unknownFields names the unknown fields of m and its nested messages.
func unknownFields(m protoreflect.Message) string {
	s := ""
	if u := m.GetUnknown(); len(u) > 0 {
		s += fmt.Sprintf("%s: %x; ", m.Descriptor().FullName(), []byte(u))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			for i := range v.List().Len() {
				s += unknownFields(v.List().Get(i).Message())
			}
		case fd.Kind() == protoreflect.MessageKind:
			s += unknownFields(v.Message())
		}
		return true
	})
	return s
}

// compareDynamic reports every top-level field on which got and want differ.
func compareDynamic(t *testing.T, got, want *dynamicpb.Message) {
	t.Helper()
	if proto.Equal(got, want) {
		return
	}
	fields := want.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		g, w := dynamicpb.NewMessage(want.Descriptor()), dynamicpb.NewMessage(want.Descriptor())
		if got.Has(f) {
			g.Set(f, got.Get(f))
		}
		if want.Has(f) {
			w.Set(f, want.Get(f))
		}
		if !proto.Equal(g, w) {
			t.Errorf("field %s: hand-encoded reads as {%v}, want {%v}", f.Name(), prototext.Format(g), prototext.Format(w))
		}
	}
}

var (
	typAddr     = reflect.TypeFor[netip.Addr]()
	typPrefix   = reflect.TypeFor[netip.Prefix]()
	typAddrPort = reflect.TypeFor[netip.AddrPort]()
	typTime     = reflect.TypeFor[time.Time]()
	typProtocol = reflect.TypeFor[Protocol]()
)

// toDynamic fills m from the Go struct v through schemaMessages, knowing
// only the conventions written at the top of schema.proto.
func toDynamic(t *testing.T, v reflect.Value, m *dynamicpb.Message) {
	t.Helper()
	sm, ok := messageFor(v.Type())
	if !ok {
		t.Fatalf("no schema message for %s", v.Type())
	}
	fields := m.Descriptor().Fields()
	if f := fields.ByName("schema_version"); f != nil && f.Number() == fieldVersion {
		m.Set(f, protoreflect.ValueOfUint32(SchemaVersion))
	}
	for pname, gname := range sm.fields {
		fd := fields.ByName(pname)
		if fd == nil {
			t.Fatalf("%s: no field %s", sm.name, pname)
		}
		gv := v.FieldByName(gname)
		switch {
		case fd.IsList() && gv.Kind() == reflect.Map:
			list := m.Mutable(fd).List()
			keys := gv.MapKeys()
			slices.SortFunc(keys, func(a, b reflect.Value) int { return compareStrings(a.String(), b.String()) })
			for _, k := range keys {
				e := list.NewElement().Message()
				ed := e.Descriptor().Fields()
				e.Set(ed.ByName("key"), protoreflect.ValueOfString(k.String()))
				e.Set(ed.ByName("value"), scalarToDynamic(t, gv.MapIndex(k), ed.ByName("value")))
				list.Append(protoreflect.ValueOfMessage(e))
			}
		case fd.IsList():
			if gv.Kind() != reflect.Slice {
				t.Fatalf("%s.%s is repeated, Go field %s is %s", sm.name, pname, gname, gv.Type())
			}
			list := m.Mutable(fd).List()
			for i := range gv.Len() {
				if fd.Kind() == protoreflect.MessageKind {
					e := list.NewElement().Message().Interface().(*dynamicpb.Message)
					toDynamic(t, gv.Index(i), e)
					list.Append(protoreflect.ValueOfMessage(e))
				} else {
					list.Append(scalarToDynamic(t, gv.Index(i), fd))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if gv.Kind() != reflect.Pointer || gv.Type().Elem().Kind() != reflect.Struct {
				t.Fatalf("%s.%s is a message, Go field %s is %s", sm.name, pname, gname, gv.Type())
			}
			if !gv.IsNil() {
				e := m.Mutable(fd).Message().Interface().(*dynamicpb.Message)
				toDynamic(t, gv.Elem(), e)
			}
		default:
			if val := scalarToDynamic(t, gv, fd); !isZero(val, fd) {
				m.Set(fd, val)
			}
		}
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func isZero(v protoreflect.Value, fd protoreflect.FieldDescriptor) bool {
	return v.Equal(fd.Default()) || (fd.Kind() == protoreflect.BytesKind && len(v.Bytes()) == 0)
}

// scalarToDynamic converts one Go value to the proto kind of fd, following
// the encodings documented in schema.proto.
func scalarToDynamic(t *testing.T, v reflect.Value, fd protoreflect.FieldDescriptor) protoreflect.Value {
	t.Helper()
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return fd.Default()
		}
		v = v.Elem()
	}
	bad := func() protoreflect.Value {
		t.Fatalf("field %s: Go %s does not fit proto %s", fd.FullName(), v.Type(), fd.Kind())
		return protoreflect.Value{}
	}
	switch v.Type() {
	case typAddr, typPrefix, typAddrPort:
		if fd.Kind() != protoreflect.BytesKind {
			return bad()
		}
		var b []byte
		switch a := v.Interface().(type) {
		case netip.Addr:
			if a.IsValid() {
				b = a.AsSlice()
			}
		case netip.Prefix:
			if a.IsValid() {
				b = append(a.Addr().AsSlice(), byte(a.Bits()))
			}
		case netip.AddrPort:
			if a.IsValid() {
				b = append(a.Addr().AsSlice(), byte(a.Port()>>8), byte(a.Port()))
			}
		}
		return protoreflect.ValueOfBytes(b)
	case typTime:
		if fd.Kind() != protoreflect.Int64Kind {
			return bad()
		}
		tm := v.Interface().(time.Time)
		if tm.IsZero() {
			return protoreflect.ValueOfInt64(0)
		}
		return protoreflect.ValueOfInt64(tm.UnixNano())
	case typProtocol:
		if fd.Kind() != protoreflect.Uint32Kind {
			return bad()
		}
		n, ok := protocolNumbers[v.Interface().(Protocol)]
		if !ok {
			t.Fatalf("field %s: protocol %q has no number", fd.FullName(), v.String())
		}
		return protoreflect.ValueOfUint32(uint32(n))
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		if v.Kind() == reflect.String {
			return protoreflect.ValueOfString(v.String())
		}
	case protoreflect.BoolKind:
		if v.Kind() == reflect.Bool {
			return protoreflect.ValueOfBool(v.Bool())
		}
	case protoreflect.Uint32Kind:
		switch v.Kind() {
		case reflect.Uint8, reflect.Uint16, reflect.Uint32:
			return protoreflect.ValueOfUint32(uint32(v.Uint()))
		case reflect.Int:
			if v.Int() < 0 || v.Int() > math.MaxUint32 {
				t.Fatalf("field %s: %d out of range", fd.FullName(), v.Int())
			}
			return protoreflect.ValueOfUint32(uint32(v.Int()))
		}
	case protoreflect.Uint64Kind:
		switch v.Kind() {
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			return protoreflect.ValueOfUint64(v.Uint())
		case reflect.Int:
			if v.Int() < 0 {
				t.Fatalf("field %s: negative count %d", fd.FullName(), v.Int())
			}
			return protoreflect.ValueOfUint64(uint64(v.Int()))
		}
	case protoreflect.DoubleKind:
		if v.Kind() == reflect.Float64 {
			return protoreflect.ValueOfFloat64(v.Float())
		}
	case protoreflect.BytesKind:
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			return protoreflect.ValueOfBytes(v.Bytes())
		}
	}
	return bad()
}

// fromDynamic is the inverse of toDynamic.
func fromDynamic(t *testing.T, m protoreflect.Message, v reflect.Value) {
	t.Helper()
	sm, ok := messageFor(v.Type())
	if !ok {
		t.Fatalf("no schema message for %s", v.Type())
	}
	fields := m.Descriptor().Fields()
	for pname, gname := range sm.fields {
		fd := fields.ByName(pname)
		gv := v.FieldByName(gname)
		switch {
		case fd.IsList() && gv.Kind() == reflect.Map:
			list := m.Get(fd).List()
			if list.Len() == 0 {
				continue
			}
			mp := reflect.MakeMap(gv.Type())
			for i := range list.Len() {
				e := list.Get(i).Message()
				ed := e.Descriptor().Fields()
				val := reflect.New(gv.Type().Elem()).Elem()
				scalarFromDynamic(t, e.Get(ed.ByName("value")), ed.ByName("value"), val)
				mp.SetMapIndex(reflect.ValueOf(e.Get(ed.ByName("key")).String()), val)
			}
			gv.Set(mp)
		case fd.IsList():
			list := m.Get(fd).List()
			for i := range list.Len() {
				e := reflect.New(gv.Type().Elem()).Elem()
				if fd.Kind() == protoreflect.MessageKind {
					fromDynamic(t, list.Get(i).Message(), e)
				} else {
					scalarFromDynamic(t, list.Get(i), fd, e)
				}
				gv.Set(reflect.Append(gv, e))
			}
		case fd.Kind() == protoreflect.MessageKind:
			if m.Has(fd) {
				p := reflect.New(gv.Type().Elem())
				fromDynamic(t, m.Get(fd).Message(), p.Elem())
				gv.Set(p)
			}
		default:
			scalarFromDynamic(t, m.Get(fd), fd, gv)
		}
	}
}

func scalarFromDynamic(t *testing.T, pv protoreflect.Value, fd protoreflect.FieldDescriptor, v reflect.Value) {
	t.Helper()
	if v.Kind() == reflect.Pointer {
		if isZero(pv, fd) {
			return
		}
		v.Set(reflect.New(v.Type().Elem()))
		v = v.Elem()
	}
	switch v.Type() {
	case typAddr:
		a, _ := netip.AddrFromSlice(pv.Bytes())
		v.Set(reflect.ValueOf(a))
		return
	case typPrefix:
		if b := pv.Bytes(); len(b) > 0 {
			a, _ := netip.AddrFromSlice(b[:len(b)-1])
			v.Set(reflect.ValueOf(netip.PrefixFrom(a, int(b[len(b)-1]))))
		}
		return
	case typAddrPort:
		if b := pv.Bytes(); len(b) > 2 {
			a, _ := netip.AddrFromSlice(b[:len(b)-2])
			v.Set(reflect.ValueOf(netip.AddrPortFrom(a, uint16(b[len(b)-2])<<8|uint16(b[len(b)-1]))))
		}
		return
	case typTime:
		if n := pv.Int(); n != 0 {
			v.Set(reflect.ValueOf(time.Unix(0, n).UTC()))
		}
		return
	case typProtocol:
		for p, n := range protocolNumbers {
			if uint64(n) == pv.Uint() {
				v.SetString(string(p))
			}
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(pv.String())
	case reflect.Bool:
		v.SetBool(pv.Bool())
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(pv.Uint())
	case reflect.Int:
		v.SetInt(int64(pv.Uint()))
	case reflect.Float64:
		v.SetFloat(pv.Float())
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.Uint8 {
			t.Fatalf("field %s: cannot convert to Go %s", fd.FullName(), v.Type())
		}
		if b := pv.Bytes(); len(b) > 0 {
			v.SetBytes(slices.Clone(b))
		}
	default:
		t.Fatalf("field %s: cannot convert to Go %s", fd.FullName(), v.Type())
	}
}

// TestSchemaUTF8 checks the codec treats strings as proto3 does: text that
// is not UTF-8 is neither written nor read.
func TestSchemaUTF8(t *testing.T) {
	fd := compileSchema(t)
	bad := "caf\xe9"
	for _, obj := range []codecObject{
		&Node{Cluster: "c1", Name: "n1", Zone: bad},
		&Cluster{Name: "c1", ID: 1, MaxClusterID: 255, Capabilities: []string{bad}},
		&Service{Cluster: "c1", Namespace: "ns", Name: "s", Labels: map[string]string{"k": bad}},
	} {
		t.Run(reflect.TypeOf(obj).Elem().Name(), func(t *testing.T) {
			if _, err := obj.Marshal(); !errors.Is(err, ErrInvalid) {
				t.Errorf("Marshal of a non-UTF-8 string: %v, want ErrInvalid", err)
			}
		})
	}
	// Bytes a broken writer produced: dynamicpb refuses them, and so does
	// the hand-written decoder.
	e := newEncoder(0)
	e.string(2, "c1")
	e.b = protowire.AppendTag(e.b, 3, protowire.BytesType)
	e.b = protowire.AppendString(e.b, bad)
	if err := proto.Unmarshal(e.b, dynamicpb.NewMessage(fd.Messages().ByName("Node"))); err == nil {
		t.Fatal("dynamicpb read a non-UTF-8 string; the test no longer checks what it claims")
	}
	var n Node
	if err := n.Unmarshal(e.b); err == nil {
		t.Errorf("hand-written decoder read a non-UTF-8 string: %+v", n)
	}
}

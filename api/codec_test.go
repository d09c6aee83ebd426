package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/clustermesh/clustermesh/api/internal/pbbench"
)

func sampleSlice(n int) *EndpointSlice {
	s := &EndpointSlice{
		Cluster: "c1", Namespace: "default", Service: "echo", Name: "echo-abcde",
		Ports: []EndpointPort{{Name: "http", Port: 8080, Protocol: ProtocolTCP}, {Name: "dns", Port: 53, Protocol: ProtocolUDP}},
	}
	for i := 0; i < n; i++ {
		s.Endpoints = append(s.Endpoints, Endpoint{
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})},
			NodeName:  fmt.Sprintf("node-%d", i%10),
			Zone:      "zone-a",
			Ready:     i%3 != 0,
			Serving:   true,
		})
	}
	return s
}

func sampleObjects() []codecObject {
	return []codecObject{
		&Cluster{Name: "c1", ID: 7, MaxClusterID: 511, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00:1::/64")},
			Capabilities: []string{"bgp"}, RouteReflector: netip.MustParseAddrPort("192.168.0.1:179"), ASN: 65001},
		&Node{Cluster: "c1", Name: "n1", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.10"), netip.MustParseAddr("fd00::10")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}, Zone: "a", BGPAddress: netip.MustParseAddr("192.168.0.10"), ASN: 65001,
			GossipAddress: netip.MustParseAddrPort("[fd00::10]:7946")},
		&Service{Cluster: "c1", ClusterID: 7, Namespace: "default", Name: "echo", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports:  []ServicePort{{Name: "http", Port: 80, Protocol: ProtocolTCP}, {Name: "sctp", Port: 9, Protocol: ProtocolSCTP}},
			Global: true, Shared: true, Affinity: AffinityLocal, MinLocalBackends: 2, Labels: map[string]string{"app": "echo", "tier": ""}},
		sampleSlice(3),
		&Identity{Cluster: "c1", ID: 7<<16 | 1, Namespace: "default", Labels: map[string]string{"app": "echo"}},
		&IPCacheEntry{Cluster: "c1", IP: netip.MustParseAddr("10.1.1.5"), Identity: 7<<16 | 1, Node: "n1", HostIP: netip.MustParseAddr("192.168.0.10"), Namespace: "default", Pod: "echo-0"},
		sampleAgentStatus(),
		samplePolicy(),
	}
}

// samplePolicy is a NetworkPolicy as the apiserver exports it.
func samplePolicy() *Policy {
	return &Policy{Cluster: "c1", Kind: PolicyKindNetworkPolicy, Namespace: "shop", Name: "api-from-web",
		Spec: []byte(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"api-from-web","namespace":"shop","labels":{"team":"shop"}},` +
			`"spec":{"podSelector":{"matchLabels":{"app":"api"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"web"}}}],"ports":[{"protocol":"TCP","port":8080}]}]}}`)}
}

func TestRoundTrip(t *testing.T) {
	for _, obj := range sampleObjects() {
		t.Run(reflect.TypeOf(obj).Elem().Name(), func(t *testing.T) {
			b, err := obj.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(obj.Key(), b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, obj) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, obj)
			}
			// Encoding is deterministic: the writer compares bytes to skip
			// no-op writes.
			again, _ := got.Marshal()
			if string(again) != string(b) {
				t.Fatal("re-encoding a decoded object changed its bytes")
			}
		})
	}
}

func TestUnknownFieldsSkipped(t *testing.T) {
	svc := sampleObjects()[2].(*Service)
	b, err := svc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// A newer writer within the same schema version adds fields 100-102 of
	// every wire type.
	b = protowire.AppendTag(b, 100, protowire.VarintType)
	b = protowire.AppendVarint(b, 42)
	b = protowire.AppendTag(b, 101, protowire.BytesType)
	b = protowire.AppendString(b, "future")
	b = protowire.AppendTag(b, 102, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 7)
	got, err := Decode(svc.Key(), b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, svc) {
		t.Fatalf("got %+v, want %+v", got, svc)
	}
}

func TestDecodeErrors(t *testing.T) {
	svc := sampleObjects()[2].(*Service)
	good, _ := svc.Marshal()
	newer := protowire.AppendVarint(protowire.AppendTag(nil, fieldVersion, protowire.VarintType), SchemaVersion+1)
	newer = append(newer, good[2:]...)
	bad := *svc
	bad.Affinity = "nearest"
	badEnc := newEncoder(0)
	badEnc.string(2, bad.Cluster)
	badEnc.string(4, bad.Namespace)
	badEnc.string(5, bad.Name)
	badEnc.string(10, string(bad.Affinity))
	tests := []struct {
		name  string
		key   string
		value []byte
		want  string
		is    error
	}{
		{"newer schema", svc.Key(), newer, "schema version", ErrSchemaVersion},
		{"no version", svc.Key(), good[2:], "missing schema version", ErrSchemaVersion},
		{"truncated", svc.Key(), good[:len(good)-3], "decode", nil},
		{"wrong key", ServiceKey("c1", "default", "other"), good, `describes key`, nil},
		{"wrong kind", NodeKey("c1", "echo"), good, "", nil},
		{"invalid value", svc.Key(), badEnc.b, `affinity "nearest"`, ErrInvalid},
		{"foreign key", "elsewhere/x", good, "not under", nil},
		{"canary", SyncedKey("c1", KindNode), []byte("1"), "holds no api object", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.key, tt.value)
			if err == nil {
				t.Fatal("decode succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want errors.Is %v", err, tt.is)
			}
		})
	}
}

func TestMarshalValidates(t *testing.T) {
	s := sampleSlice(2)
	s.Endpoints[1].Addresses = nil
	if _, err := s.Marshal(); err == nil || !strings.Contains(err.Error(), "endpoint #1 has no address") {
		t.Fatalf("err = %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder: none may panic, and
// whatever decodes must re-encode and decode to the same object.
func FuzzDecode(f *testing.F) {
	for _, obj := range sampleObjects() {
		b, _ := obj.Marshal()
		f.Add(obj.Key(), b)
	}
	f.Add(ClusterKey("c1"), []byte{0x08, 0x01, 0x2a, 0xff})
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		obj, err := Decode(key, value)
		if err != nil {
			return
		}
		b, err := obj.Marshal()
		if err != nil {
			t.Fatalf("decoded object does not re-encode: %v", err)
		}
		again, err := Decode(key, b)
		if err != nil {
			t.Fatalf("re-encoded object does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, obj) {
			t.Fatalf("unstable round trip:\n%+v\n%+v", obj, again)
		}
	})
}

// BenchmarkEndpointSlice reports encode and decode cost per endpoint for a
// 100-endpoint slice, against encoding/json and against code generated from
// schema.proto by protoc-gen-go (api/internal/pbbench) as baselines. The
// hand-written codec validates and converts to netip types on every call;
// "validate" and "decode/wire-unmarshal" split that off so the comparison
// with the generated code, which does neither, is like with like.
//
//	go test ./api -run '^$' -bench EndpointSlice -benchmem
func BenchmarkEndpointSlice(b *testing.B) {
	const n = 100
	s := sampleSlice(n)
	key := s.Key()
	wire, _ := s.Marshal()
	js, _ := json.Marshal(s)
	gen := new(pbbench.EndpointSlice)
	if err := proto.Unmarshal(wire, gen); err != nil {
		b.Fatal(err)
	}
	perEndpoint := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/endpoint")
	}
	b.Run("encode/wire", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			if _, err := s.Marshal(); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("encode/generated", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			if _, err := proto.Marshal(gen); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("encode/json", func(b *testing.B) {
		b.SetBytes(int64(len(js)))
		for b.Loop() {
			if _, err := json.Marshal(s); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("validate", func(b *testing.B) {
		for b.Loop() {
			if err := s.Validate(); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("decode/wire", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			if _, err := Decode(key, wire); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("decode/wire-unmarshal", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			var out EndpointSlice
			if err := out.Unmarshal(wire); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("decode/generated", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			var out pbbench.EndpointSlice
			if err := proto.Unmarshal(wire, &out); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
	b.Run("decode/json", func(b *testing.B) {
		b.SetBytes(int64(len(js)))
		for b.Loop() {
			var out EndpointSlice
			if err := json.Unmarshal(js, &out); err != nil {
				b.Fatal(err)
			}
			if err := out.Validate(); err != nil {
				b.Fatal(err)
			}
		}
		perEndpoint(b)
	})
}

// TestGeneratedBaselineInSync fails when api/internal/pbbench was not
// regenerated after a change of schema.proto: the benchmark baseline would
// measure another schema.
func TestGeneratedBaselineInSync(t *testing.T) {
	want := compileSchema(t)
	got := pbbench.File_schema_proto
	if d := diffDescriptors(want.Messages(), got.Messages()); d != "" {
		t.Errorf("api/internal/pbbench is stale (go generate ./api/internal/pbbench): %s", d)
	}
	// The generated code reads the hand-written bytes as dynamicpb does.
	for _, obj := range sampleObjects() {
		b, err := obj.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		mt, err := protoregistry.GlobalTypes.FindMessageByName(pbbench.File_schema_proto.Package().Append(messageName(t, obj)))
		if err != nil {
			t.Fatal(err)
		}
		m := mt.New().Interface()
		if err := proto.Unmarshal(b, m); err != nil {
			t.Errorf("%T: generated code cannot read the hand-written bytes: %v", obj, err)
		} else if len(m.ProtoReflect().GetUnknown()) > 0 {
			t.Errorf("%T: generated code sees unknown fields in the hand-written bytes", obj)
		} else if again, err := (proto.MarshalOptions{Deterministic: true}).Marshal(m); err != nil || !bytes.Equal(again, b) {
			// Both write fields in number order and skip zero values, so
			// the benchmark compares work on identical bytes.
			t.Errorf("%T: generated code re-encodes the hand-written bytes differently (%v)", obj, err)
		}
	}
}

func messageName(t *testing.T, obj codecObject) protoreflect.Name {
	sm, ok := messageFor(reflect.TypeOf(obj).Elem())
	if !ok {
		t.Fatalf("no schema message for %T", obj)
	}
	return sm.name
}

// diffDescriptors names the first difference between two message lists:
// names, field names, numbers, kinds, cardinalities and message types.
func diffDescriptors(a, b protoreflect.MessageDescriptors) string {
	if a.Len() != b.Len() {
		return fmt.Sprintf("%d messages, generated %d", a.Len(), b.Len())
	}
	for i := range a.Len() {
		ma, mb := a.Get(i), b.Get(i)
		if ma.Name() != mb.Name() || ma.Fields().Len() != mb.Fields().Len() {
			return fmt.Sprintf("message %s (%d fields), generated %s (%d fields)", ma.Name(), ma.Fields().Len(), mb.Name(), mb.Fields().Len())
		}
		for j := range ma.Fields().Len() {
			fa, fb := ma.Fields().Get(j), mb.Fields().Get(j)
			desc := func(f protoreflect.FieldDescriptor) string {
				s := fmt.Sprintf("%s=%d %s %s", f.Name(), f.Number(), f.Cardinality(), f.Kind())
				if f.Message() != nil {
					s += " " + string(f.Message().Name())
				}
				return s
			}
			if desc(fa) != desc(fb) {
				return fmt.Sprintf("%s: field %s, generated %s", ma.Name(), desc(fa), desc(fb))
			}
		}
	}
	return ""
}

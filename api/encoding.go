package api

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The store's values use the protobuf wire format, written and read by hand
// with protowire: no code generator is needed, the bytes can be read by any
// protobuf implementation given schema.proto, fields are numbered so new
// ones can be added within a schema version (older readers skip them), and
// decoding a 100-endpoint slice costs a fraction of encoding/json (see
// BenchmarkEndpointSlice).
//
// Every message starts with field 1, the schema version. Addresses are 4 or
// 16 raw bytes, prefixes the address followed by one byte of prefix length,
// address-ports the address followed by two big-endian bytes of port. Maps
// are repeated (key=1, value=2) entries in key order, so that equal objects
// always encode to equal bytes: the writer relies on that to skip writes that
// change nothing.

// ErrSchemaVersion is returned for values written with a newer major schema
// than this build understands.
var ErrSchemaVersion = errors.New("unsupported schema version")

const fieldVersion = 1

type encoder struct {
	b []byte
	// err is the first value that cannot be written (a string that is not
	// UTF-8, which proto3 readers refuse).
	err error
}

func newEncoder(sizeHint int) *encoder {
	e := &encoder{b: make([]byte, 0, sizeHint)}
	e.uint(fieldVersion, SchemaVersion)
	return e
}

func (e *encoder) uint(num protowire.Number, v uint64) {
	if v == 0 {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.VarintType)
	e.b = protowire.AppendVarint(e.b, v)
}

func (e *encoder) bool(num protowire.Number, v bool) {
	if v {
		e.uint(num, 1)
	}
}

func (e *encoder) string(num protowire.Number, s string) {
	if s == "" {
		return
	}
	if !utf8.ValidString(s) && e.err == nil {
		e.err = fmt.Errorf("field %d: %q is not valid UTF-8", num, s)
	}
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendString(e.b, s)
}

// stringElem writes one element of a repeated string field, even when empty.
func (e *encoder) stringElem(num protowire.Number, s string) {
	if !utf8.ValidString(s) && e.err == nil {
		e.err = fmt.Errorf("field %d: %q is not valid UTF-8", num, s)
	}
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendString(e.b, s)
}

// bytes writes a length-delimited field even when empty: used for repeated
// fields, where an empty element is still an element.
func (e *encoder) bytes(num protowire.Number, v []byte) {
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	e.b = protowire.AppendBytes(e.b, v)
}

func (e *encoder) addr(num protowire.Number, a netip.Addr) {
	if !a.IsValid() {
		return
	}
	e.bytes(num, a.AsSlice())
}

func (e *encoder) prefix(num protowire.Number, p netip.Prefix) {
	e.bytes(num, append(p.Addr().AsSlice(), byte(p.Bits())))
}

func (e *encoder) addrPort(num protowire.Number, ap netip.AddrPort) {
	if !ap.IsValid() {
		return
	}
	e.bytes(num, append(ap.Addr().AsSlice(), byte(ap.Port()>>8), byte(ap.Port())))
}

// message writes a nested message built by fill.
func (e *encoder) message(num protowire.Number, fill func(*encoder)) {
	e.b = protowire.AppendTag(e.b, num, protowire.BytesType)
	// Reserve one length byte, the common case; shift if it needs more.
	start := len(e.b)
	e.b = append(e.b, 0)
	fill(e)
	n := len(e.b) - start - 1
	if size := protowire.SizeVarint(uint64(n)); size > 1 {
		e.b = append(e.b, make([]byte, size-1)...)
		copy(e.b[start+size:], e.b[start+1:start+1+n])
	}
	protowire.AppendVarint(e.b[:start], uint64(n))
}

// time writes a timestamp as nanoseconds since the Unix epoch (int64); the
// zero time is not written.
func (e *encoder) time(num protowire.Number, t time.Time) {
	if !t.IsZero() {
		e.uint(num, uint64(t.UnixNano()))
	}
}

// double writes a float64 as a protobuf double (fixed64).
func (e *encoder) double(num protowire.Number, v float64) {
	if math.Float64bits(v) == 0 {
		return
	}
	e.b = protowire.AppendTag(e.b, num, protowire.Fixed64Type)
	e.b = protowire.AppendFixed64(e.b, math.Float64bits(v))
}

// countMap writes a map of counts as repeated (key=1, value=2) entries in
// key order.
func (e *encoder) countMap(num protowire.Number, m map[string]int) {
	encodeMap(e, num, m, func(e *encoder, n int) { e.uint(2, uint64(n)) })
}

func (e *encoder) stringMap(num protowire.Number, m map[string]string) {
	encodeMap(e, num, m, func(e *encoder, v string) { e.string(2, v) })
}

// encodeMap writes m as repeated (key=1, value=2) entries in key order, so
// that equal maps encode to equal bytes; val writes field 2.
func encodeMap[V any](e *encoder, num protowire.Number, m map[string]V, val func(*encoder, V)) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		e.message(num, func(e *encoder) {
			e.string(1, k)
			val(e, m[k])
		})
	}
}

// field is one decoded field of a message: v holds a length-delimited
// value, n a varint.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   []byte
	n   uint64
}

func (f field) bytes() ([]byte, error) {
	if f.typ != protowire.BytesType {
		return nil, fmt.Errorf("field %d: wire type %d, want length-delimited", f.num, f.typ)
	}
	return f.v, nil
}

// string refuses bytes that are not UTF-8, as every proto3 reader does.
func (f field) string() (string, error) {
	v, err := f.bytes()
	if err == nil && !utf8.Valid(v) {
		err = fmt.Errorf("field %d: string is not valid UTF-8", f.num)
	}
	return string(v), err
}

// finish returns the encoded message, or the first error met.
func (e *encoder) finish() ([]byte, error) {
	if e.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, e.err)
	}
	return e.b, nil
}

func (f field) uint() (uint64, error) {
	if f.typ != protowire.VarintType {
		return 0, fmt.Errorf("field %d: wire type %d, want varint", f.num, f.typ)
	}
	return f.n, nil
}

// int reads a count held in a Go int.
func (f field) int() (int, error) {
	n, err := f.uint()
	if err == nil && n > math.MaxInt {
		err = fmt.Errorf("field %d: %d out of range", f.num, n)
	}
	return int(n), err
}

// time reads a timestamp written by encoder.time, in UTC.
func (f field) time() (time.Time, error) {
	n, err := f.uint()
	if err != nil || n == 0 {
		return time.Time{}, err
	}
	return time.Unix(0, int64(n)).UTC(), nil
}

func (f field) double() (float64, error) {
	if f.typ != protowire.Fixed64Type {
		return 0, fmt.Errorf("field %d: wire type %d, want fixed64", f.num, f.typ)
	}
	return math.Float64frombits(f.n), nil
}

// message decodes a nested message field by field; what names it in errors.
func (f field) message(what string, fn func(field) error) error {
	v, err := f.bytes()
	if err == nil {
		err = decode(v, fn)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// countMap decodes one (key=1, value=2) entry of a map of counts into m.
func (f field) countMap(m *map[string]int) error {
	if err := decodeMapEntry(f, m, field.int); err != nil {
		return fmt.Errorf("count: %w", err)
	}
	return nil
}

func (f field) bool() (bool, error) {
	n, err := f.uint()
	return n != 0, err
}

func (f field) uint32() (uint32, error) {
	n, err := f.uint()
	if err == nil && n > 0xffffffff {
		err = fmt.Errorf("field %d: %d out of range", f.num, n)
	}
	return uint32(n), err
}

func (f field) uint16() (uint16, error) {
	n, err := f.uint()
	if err == nil && n > 0xffff {
		err = fmt.Errorf("field %d: %d out of range", f.num, n)
	}
	return uint16(n), err
}

func (f field) addr() (netip.Addr, error) {
	v, err := f.bytes()
	if err != nil {
		return netip.Addr{}, err
	}
	a, ok := netip.AddrFromSlice(v)
	if !ok {
		return netip.Addr{}, fmt.Errorf("field %d: address of %d bytes", f.num, len(v))
	}
	return a, nil
}

func (f field) prefix() (netip.Prefix, error) {
	v, err := f.bytes()
	if err != nil {
		return netip.Prefix{}, err
	}
	if len(v) != 5 && len(v) != 17 {
		return netip.Prefix{}, fmt.Errorf("field %d: prefix of %d bytes", f.num, len(v))
	}
	a, _ := netip.AddrFromSlice(v[:len(v)-1])
	bits := int(v[len(v)-1])
	if bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("field %d: prefix length %d for %s", f.num, bits, a)
	}
	// Host bits are kept as written: validation reports them by name.
	return netip.PrefixFrom(a, bits), nil
}

func (f field) addrPort() (netip.AddrPort, error) {
	v, err := f.bytes()
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(v) != 6 && len(v) != 18 {
		return netip.AddrPort{}, fmt.Errorf("field %d: address-port of %d bytes", f.num, len(v))
	}
	a, _ := netip.AddrFromSlice(v[:len(v)-2])
	return netip.AddrPortFrom(a, uint16(v[len(v)-2])<<8|uint16(v[len(v)-1])), nil
}

func (f field) protocol() (Protocol, error) {
	n, err := f.uint()
	if err != nil {
		return "", err
	}
	for p, num := range protocolNumbers {
		if uint64(num) == n {
			return p, nil
		}
	}
	// Unknown numbers decode to a name that validation refuses.
	return Protocol(fmt.Sprintf("protocol-%d", n)), nil
}

// stringMap decodes one (key=1, value=2) entry into m.
func (f field) stringMap(m *map[string]string) error {
	return decodeMapEntry(f, m, field.string)
}

// decodeMapEntry decodes one (key=1, value=2) map entry into m, the value
// with val.
func decodeMapEntry[V any](f field, m *map[string]V, val func(field) (V, error)) error {
	v, err := f.bytes()
	if err != nil {
		return err
	}
	var k string
	var value V
	err = decode(v, func(f field) (err error) {
		switch f.num {
		case 1:
			k, err = f.string()
		case 2:
			value, err = val(f)
		}
		return err
	})
	if err != nil {
		return err
	}
	if *m == nil {
		*m = make(map[string]V)
	}
	(*m)[k] = value
	return nil
}

// protocolNumbers encodes protocols by their IANA numbers.
var protocolNumbers = map[Protocol]uint8{ProtocolTCP: 6, ProtocolUDP: 17, ProtocolSCTP: 132}

func (e *encoder) protocol(num protowire.Number, p Protocol) {
	n, ok := protocolNumbers[p]
	if !ok {
		// Encode what validation will refuse rather than silently
		// rewriting it: Marshal validates first, so this is unreachable
		// for well-formed objects.
		n = 255
	}
	e.uint(num, uint64(n))
}

// decode walks the fields of a message, handing each to fn. fn ignores
// field numbers it does not know, which is how fields added by newer writers
// are skipped.
func decode(b []byte, fn func(field) error) error {
	for len(b) > 0 {
		num, typ, tl := protowire.ConsumeTag(b)
		if tl < 0 {
			return fmt.Errorf("field tag: %w", protowire.ParseError(tl))
		}
		b = b[tl:]
		f := field{num: num, typ: typ}
		var vl int
		switch typ {
		case protowire.VarintType:
			f.n, vl = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.v, vl = protowire.ConsumeBytes(b)
		case protowire.Fixed64Type:
			f.n, vl = protowire.ConsumeFixed64(b)
		default:
			vl = protowire.ConsumeFieldValue(num, typ, b)
		}
		if vl < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(vl))
		}
		b = b[vl:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// top decodes a top-level message: it checks the schema version and hands
// every other field to fn.
func top(b []byte, fn func(field) error) error {
	_, err := topVersion(b, fn)
	return err
}

// topVersion is top that also returns the schema version read.
func topVersion(b []byte, fn func(field) error) (uint64, error) {
	var version uint64
	err := decode(b, func(f field) (err error) {
		if f.num == fieldVersion {
			version, err = f.uint()
			return err
		}
		return fn(f)
	})
	if err != nil {
		return 0, err
	}
	if version == 0 {
		return 0, fmt.Errorf("%w: missing schema version", ErrSchemaVersion)
	}
	if version > SchemaVersion {
		return 0, fmt.Errorf("%w: %d, this build reads up to %d", ErrSchemaVersion, version, SchemaVersion)
	}
	return version, nil
}

// Decode decodes and validates the value stored at key, choosing the type
// from the key's kind. The returned object's key always equals key: a value
// that claims to live elsewhere is refused.
func Decode(key string, value []byte) (Object, error) {
	pk, err := ParseKey(key)
	if err != nil {
		return nil, err
	}
	var obj interface {
		Object
		Unmarshal([]byte) error
	}
	switch pk.Kind {
	case KindCluster:
		obj = new(Cluster)
	case KindNode:
		obj = new(Node)
	case KindService:
		obj = new(Service)
	case KindEndpoints:
		obj = new(EndpointSlice)
	case KindIdentity:
		obj = new(Identity)
	case KindIPCache:
		obj = new(IPCacheEntry)
	case KindAgents:
		obj = new(AgentStatus)
	case KindPolicy:
		obj = new(Policy)
	default:
		return nil, fmt.Errorf("key %q: kind %s holds no api object", key, pk.Kind)
	}
	if err := obj.Unmarshal(value); err != nil {
		return nil, fmt.Errorf("key %q: decode: %w", key, err)
	}
	if err := obj.Validate(); err != nil {
		return nil, fmt.Errorf("key %q: %w", key, err)
	}
	if got := obj.Key(); got != key {
		return nil, fmt.Errorf("key %q: value describes key %q", key, got)
	}
	return obj, nil
}

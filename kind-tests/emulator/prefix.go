package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
)

// Sentinel errors of the package.
var (
	// ErrNotRoot is returned when the harness is used without root privileges.
	ErrNotRoot = errors.New("harness needs root (network namespaces, cgroups, bpffs)")
	// ErrMissingPart is returned when a project binary or tool the caller asked
	// for does not exist (yet) in the tree.
	ErrMissingPart = errors.New("project part missing")
	// ErrBadPrefix is returned for a prefix that does not match PrefixPattern.
	ErrBadPrefix = errors.New("bad run prefix")
)

// PrefixPattern matches every run prefix the harness hands out. The cleanup
// command removes objects whose names start with a match. "cmk" (clustermesh
// kind) keeps it apart from the "cm"+hex prefixes other packages' tests use
// on the same machine, so cleaning leftovers never touches a running unit
// test of another package.
var PrefixPattern = regexp.MustCompile(`^cmk[0-9a-f]{4}$`)

// NewPrefix returns a fresh run prefix: "cmk" followed by 4 random hex
// digits. It is 7 characters, leaving 8 for suffixes in interface names.
func NewPrefix() string {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return "cmk" + hex.EncodeToString(b[:])
}

// CheckPrefix returns ErrBadPrefix unless p is a run prefix.
func CheckPrefix(p string) error {
	if !PrefixPattern.MatchString(p) {
		return fmt.Errorf("prefix %q: %w (want %s)", p, ErrBadPrefix, PrefixPattern)
	}
	return nil
}

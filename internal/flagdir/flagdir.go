// Package flagdir applies a directory of flag values to a flag set: one file
// per flag, named for the flag, holding its value. It is how the daemons read
// the settings ConfigMaps that `clustermesh enable` owns (mounted as a
// directory), so that operator settings survive a re-run of enable instead
// of living in hand edits of the DaemonSet's arguments.
//
// Flags given on the command line win over the directory: the manifests keep
// what is tied to the pod's own layout (mount paths) on the command line,
// and everything an operator may change in the directory.
package flagdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// ErrUnknownFlag is returned for a file that names no flag of the set: a
// typo in a settings ConfigMap must stop the daemon, not be ignored.
var ErrUnknownFlag = errors.New("no such flag")

// maxValue bounds one value: a flag value is a line, not a file.
const maxValue = 64 << 10

// Apply sets, for every file in dir, the flag of the same name to the file's
// content (surrounding white space trimmed), unless the flag was set on the
// command line. Names starting with "." are skipped: a mounted ConfigMap
// keeps its data in "..data" and timestamped directories beside the key
// links. It returns the names it applied, sorted. An empty dir applies
// nothing; a missing dir is an error.
func Apply(fs *pflag.FlagSet, dir string) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("config dir: %w", err)
	}
	var applied []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		// Stat, not the entry's type: ConfigMap keys are symbolic links.
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("config dir %s: key %s: %w", dir, name, err)
		}
		if !st.Mode().IsRegular() {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			return nil, fmt.Errorf("config dir %s: key %s: %w (see --help for the flags a key may name)", dir, name, ErrUnknownFlag)
		}
		if f.Changed {
			continue
		}
		if st.Size() > maxValue {
			return nil, fmt.Errorf("config dir %s: key %s: value of %d bytes, at most %d", dir, name, st.Size(), maxValue)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config dir %s: key %s: %w", dir, name, err)
		}
		if err := fs.Set(name, strings.TrimSpace(string(raw))); err != nil {
			return nil, fmt.Errorf("config dir %s: key %s: %w", dir, name, err)
		}
		applied = append(applied, name)
	}
	sort.Strings(applied)
	return applied, nil
}

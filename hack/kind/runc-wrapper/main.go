// Command runc-wrapper (installed as clustermesh-runc) runs the real runc
// after removing CAP_SYS_RESOURCE from the capabilities the container or the
// exec'd process asks for.
//
// Why: the machines this project builds on have a capability bounding set
// without CAP_SYS_RESOURCE. A privileged container (every kind node is one)
// asks for all capabilities, and runc fails with "unable to apply caps:
// operation not permitted". Docker ignores --cap-drop with --privileged, so
// the only place to drop it is the OCI spec runc reads. Docker uses this
// wrapper as its default runtime (hack/kind/docker.sh) and the node's
// containerd as its runc BinaryName (privileged pods such as the agent).
// On a machine whose bounding set has the capability it changes nothing.
//
// runc reads the container's spec from <bundle>/config.json for create and
// run, and the process spec from --process FILE for exec; the wrapper edits
// that file in place and then execs the real runc with the same arguments.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// dropped is the capability the bounding set lacks.
const dropped = "CAP_SYS_RESOURCE"

// realRuncs are where Debian's runc package installs runc; the first that
// exists is run.
var realRuncs = []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"}

// globalValueFlags are runc's global flags that take a value as the next
// argument; skipping them finds the subcommand.
var globalValueFlags = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}

func main() {
	args := os.Args[1:]
	if err := rewrite(args); err != nil {
		fmt.Fprintf(os.Stderr, "clustermesh-runc: %v\n", err)
		os.Exit(1)
	}
	self, _ := os.Executable()
	for _, p := range realRuncs {
		if p == self {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			err = syscall.Exec(p, append([]string{p}, args...), os.Environ())
			fmt.Fprintf(os.Stderr, "clustermesh-runc: exec %s: %v\n", p, err)
			os.Exit(1)
		}
	}
	fmt.Fprintf(os.Stderr, "clustermesh-runc: no runc in %s\n", strings.Join(realRuncs, ", "))
	os.Exit(1)
}

// rewrite finds the spec file the runc command line reads, if any, and drops
// the capability from it.
func rewrite(args []string) error {
	cmd, rest := subcommand(args)
	switch cmd {
	case "create", "run":
		bundle := flagValue(rest, "--bundle", "-b")
		if bundle == "" {
			bundle = "."
		}
		return dropFromFile(filepath.Join(bundle, "config.json"), "process", "capabilities")
	case "exec":
		if p := flagValue(rest, "--process", "-p"); p != "" {
			return dropFromFile(p, "capabilities")
		}
	}
	return nil
}

// subcommand returns runc's subcommand and the arguments after it.
func subcommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if globalValueFlags[a] {
			i++
			continue
		}
		if strings.HasPrefix(a, "-") {
			continue
		}
		return a, args[i+1:]
	}
	return "", nil
}

// flagValue returns the value of a flag given as "--name v", "--name=v",
// "-n v" or "-n=v", or "".
func flagValue(args []string, long, short string) string {
	for i, a := range args {
		for _, n := range []string{long, short} {
			if a == n && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v
			}
		}
	}
	return ""
}

// dropFromFile removes the capability from the capability sets found under
// path (a chain of object keys) in the JSON file, rewriting it only when it
// changes. Unknown fields are kept as they are.
func dropFromFile(file string, path ...string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	if !bytes.Contains(data, []byte(dropped)) {
		return nil
	}
	out, changed, err := dropCap(data, path...)
	if err != nil || !changed {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	if err := os.WriteFile(file, out, st.Mode().Perm()); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	return nil
}

// dropCap returns the JSON document with the capability removed from every
// set (bounding, effective, inheritable, permitted, ambient) of the object
// at path.
func dropCap(data []byte, path ...string) ([]byte, bool, error) {
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // keep uids, rlimits and the like exactly as written
	if err := dec.Decode(&doc); err != nil {
		return nil, false, fmt.Errorf("parse spec: %w", err)
	}
	obj := doc
	for _, k := range path {
		next, ok := obj[k].(map[string]any)
		if !ok {
			return data, false, nil
		}
		obj = next
	}
	changed := false
	for set, v := range obj {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := list[:0:0]
		for _, c := range list {
			if c != dropped {
				kept = append(kept, c)
			}
		}
		if len(kept) != len(list) {
			obj[set] = kept
			changed = true
		}
	}
	if !changed {
		return data, false, nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, false, fmt.Errorf("encode spec: %w", err)
	}
	return out, true, nil
}

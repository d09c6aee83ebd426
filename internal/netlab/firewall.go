package netlab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// iptablesVariants are the iptables front ends whose FORWARD policy a host
// may have at DROP: dockerd uses whichever `iptables` is, and a host may have
// rules in both the nf_tables and the legacy back end. nftFamily is the
// nf_tables family the front end writes its "filter" table in, if any.
var iptablesVariants = []struct{ bin, nftFamily string }{
	{"iptables-nft", "ip"}, {"iptables-legacy", ""}, {"ip6tables-nft", "ip6"}, {"ip6tables-legacy", ""},
}

// bridgeCallKeys are the root namespace switches that send bridged frames
// through iptables, as dockerd leaves them.
var bridgeCallKeys = []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"}

// HostFirewallDrop makes the host (root network namespace) firewall look
// like one where dockerd has run: the FORWARD policy of every iptables
// variant present at DROP, and bridge netfilter on (when the kernel has it).
// It returns a function that restores what it changed, which is also
// registered with tb.Cleanup so that a failing test restores too; calling it
// more than once is harmless. bridged reports whether bridge netfilter is on
// during the window, i.e. whether frames crossing a bridge of the root
// namespace are dropped.
//
// The change is global: every process of the machine forwarding through the
// root namespace is cut off until restore, so tests keep the window to the
// few checks that need it.
func HostFirewallDrop(tb testing.TB) (restore func(), bridged bool) {
	tb.Helper()
	var undo []func() error
	for _, v := range iptablesVariants {
		bin := v.bin
		path, err := exec.LookPath(bin)
		if err != nil {
			continue
		}
		// Setting a policy creates the nf_tables table and chain when the
		// host had none: restore removes them again if still empty.
		created := v.nftFamily != "" && !nftTableExists(v.nftFamily)
		out, err := exec.Command(path, "-w", "-S", "FORWARD").CombinedOutput()
		if err != nil {
			tb.Logf("host firewall: %s unusable, skipped: %v: %s", bin, err, bytes.TrimSpace(out))
			continue
		}
		old, ok := forwardPolicy(out)
		if !ok {
			tb.Logf("host firewall: %s: no FORWARD policy in %q, skipped", bin, out)
			continue
		}
		if err := setPolicy(path, "DROP"); err != nil {
			tb.Errorf("host firewall: %v", err)
			continue
		}
		undo = append(undo, func() error {
			if err := setPolicy(path, old); err != nil {
				return err
			}
			if created {
				return dropEmptyNftTable(v.nftFamily)
			}
			return nil
		})
	}
	if _, err := os.Stat("/proc/sys/" + bridgeCallKeys[0]); errors.Is(err, os.ErrNotExist) {
		// Dockerd loads it the same way; no modprobe is no bridge netfilter.
		if out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput(); err != nil {
			tb.Logf("host firewall: br_netfilter not loaded and not loadable (%v: %s): only the FORWARD policy applies", err, bytes.TrimSpace(out))
		}
	}
	for _, k := range bridgeCallKeys {
		p := "/proc/sys/" + k
		old, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if err := os.WriteFile(p, []byte("1"), 0); err != nil {
			tb.Errorf("host firewall: sysctl %s=1: %v", k, err)
			continue
		}
		bridged = bridged || k == bridgeCallKeys[0]
		undo = append(undo, func() error { return os.WriteFile(p, old, 0) })
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			var errs []error
			for i := len(undo) - 1; i >= 0; i-- {
				errs = append(errs, undo[i]())
			}
			if err := errors.Join(errs...); err != nil {
				tb.Errorf("host firewall: restore: %v", err)
			}
		})
	}
	tb.Cleanup(restore)
	return restore, bridged
}

// forwardPolicy finds the FORWARD chain's policy in `iptables -S FORWARD`
// output.
func forwardPolicy(out []byte) (string, bool) {
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "-P FORWARD "); ok {
			return p, true
		}
	}
	return "", false
}

func setPolicy(path, policy string) error {
	if out, err := exec.Command(path, "-w", "-P", "FORWARD", policy).CombinedOutput(); err != nil {
		return fmt.Errorf("%s -P FORWARD %s: %w: %s", path, policy, err, bytes.TrimSpace(out))
	}
	return nil
}

// nftTableExists reports whether the nf_tables table "filter" of family
// exists; without the nft tool it says yes, so that nothing is removed.
func nftTableExists(family string) bool {
	if _, err := exec.LookPath("nft"); err != nil {
		return true
	}
	return exec.Command("nft", "list", "table", family, "filter").Run() == nil
}

// dropEmptyNftTable deletes the nf_tables table "filter" of family when it
// holds no rule and no chain with a DROP policy: what is left of setting
// and restoring a policy on a host that had no table. A table that got rules
// meanwhile (a dockerd started) is kept.
func dropEmptyNftTable(family string) error {
	out, err := exec.Command("nft", "-j", "list", "table", family, "filter").Output()
	if err != nil {
		return nil // gone already
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("nft table %s filter: %w", family, err)
	}
	for _, obj := range doc.Nftables {
		if _, ok := obj["rule"]; ok {
			return nil
		}
		if c, ok := obj["chain"]; ok {
			var chain struct{ Policy string }
			if json.Unmarshal(c, &chain) != nil || chain.Policy != "accept" {
				return nil
			}
		}
		for _, kind := range []string{"set", "map", "flowtable", "counter", "quota", "limit", "ct helper"} {
			if _, ok := obj[kind]; ok {
				return nil
			}
		}
	}
	if out, err := exec.Command("nft", "delete", "table", family, "filter").CombinedOutput(); err != nil {
		return fmt.Errorf("nft delete table %s filter: %w: %s", family, err, bytes.TrimSpace(out))
	}
	return nil
}

// HostDropsForwarded reports whether the host already drops forwarded
// bridge frames as a host where dockerd ran does: bridge netfilter on and
// an IPv4 FORWARD policy of DROP in some iptables back end.
func HostDropsForwarded() bool {
	b, err := os.ReadFile("/proc/sys/" + bridgeCallKeys[0])
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		return false
	}
	for _, bin := range []string{"iptables-nft", "iptables-legacy"} {
		path, err := exec.LookPath(bin)
		if err != nil {
			continue
		}
		out, err := exec.Command(path, "-w", "-S", "FORWARD").CombinedOutput()
		if err != nil {
			continue
		}
		if p, ok := forwardPolicy(out); ok && p == "DROP" {
			return true
		}
	}
	return false
}

package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsPath is where ip(8) keeps the named network namespace name.
func NetnsPath(name string) string { return "/run/netns/" + name }

// IP runs the ip(8) command, in the named network namespace netns through
// its -n switch (which does not remount /sys, unlike `ip netns exec`), or in
// the caller's namespace when netns is empty.
func IP(ctx context.Context, netns string, args ...string) error {
	full := args
	if netns != "" {
		full = append([]string{"-n", netns}, args...)
	}
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Sysctl sets kernel parameters ("key=value") inside a named network
// namespace. /proc/sys/net follows the network namespace of the writer, so
// nsenter --net is enough.
func Sysctl(ctx context.Context, netns string, kv ...string) error {
	args := append([]string{"--net=" + NetnsPath(netns), "sysctl", "-q", "-w"}, kv...)
	out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns %s: sysctl %s: %w: %s", netns, strings.Join(kv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// AddNetns adds a named network namespace with loopback up.
func AddNetns(ctx context.Context, name string) error {
	if err := IP(ctx, "", "netns", "add", name); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	if err := IP(ctx, name, "link", "set", "lo", "up"); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	return nil
}

// DelNetns deletes a named network namespace (and with it every device in
// it and the peers of its veths); one already gone is not an error.
func DelNetns(ctx context.Context, name string) error {
	if _, err := os.Stat(NetnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return IP(ctx, "", "netns", "del", name)
}

// DelLink removes a link of the caller's namespace; a link already gone (its
// peer's namespace was deleted) is not an error, nor is one that goes while
// this runs: the kernel removes the peers of a deleted namespace's veths
// asynchronously.
func DelLink(ctx context.Context, name string) error {
	if _, err := netlink.LinkByName(name); err != nil {
		return nil
	}
	err := IP(ctx, "", "link", "del", name)
	var gone netlink.LinkNotFoundError
	if _, lerr := netlink.LinkByName(name); err != nil && errors.As(lerr, &gone) {
		return nil
	}
	return err
}

// Handle opens a netlink handle in the named network namespace; the caller
// closes it.
func Handle(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(NetnsPath(name))
	if err != nil {
		return nil, fmt.Errorf("netns %s: open: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netns %s: netlink: %w", name, err)
	}
	return h, nil
}

// InNetns runs fn on an OS thread switched to the named network namespace.
// Sockets fn creates stay in that namespace for their whole life. If the
// thread cannot be switched back it is left locked, so the runtime retires
// it with its goroutine.
func InNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: current: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(NetnsPath(name))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: open: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: enter: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("netns %s: leave: %w", name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// AddBridgeNetns adds a named network namespace holding bridge, up: the
// place where a lab's L2 segment forwards. Frames cross the bridge inside
// that namespace, whose netfilter tables are its own and empty, so the
// caller's FORWARD policy (DROP on every host where dockerd ever ran) and
// bridge netfilter settings (net.bridge.bridge-nf-call-iptables=1, also left
// by dockerd) do not apply to them, without changing either for anything
// else. Bridge netfilter, per namespace since Linux 5.3, is also turned off
// inside, so frames skip netfilter altogether.
func AddBridgeNetns(ctx context.Context, name, bridge string) error {
	if err := AddNetns(ctx, name); err != nil {
		return err
	}
	if err := InNetns(name, disableBridgeNetfilter); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	if err := IP(ctx, name, "link", "add", bridge, "type", "bridge"); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	if err := IP(ctx, name, "link", "set", bridge, "up"); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	return nil
}

// bridgeNetfilterKeys are the bridge netfilter switches, under /proc/sys.
var bridgeNetfilterKeys = []string{
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/bridge/bridge-nf-call-arptables",
}

// disableBridgeNetfilter turns bridge netfilter off in the calling thread's
// network namespace. Files missing (br_netfilter not loaded, or a kernel
// where the switches are global) are skipped: the namespace's empty tables
// accept everything then.
func disableBridgeNetfilter() error {
	for _, k := range bridgeNetfilterKeys {
		err := os.WriteFile("/proc/sys/"+k, []byte("0"), 0)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("sysctl %s=0: %w", strings.ReplaceAll(k, "/", "."), err)
		}
	}
	return nil
}

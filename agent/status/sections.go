package status

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"
)

// maxPrintedMembers is how many health members the text output lists in
// full; beyond it only the ones not alive or not healthy are listed.
const maxPrintedMembers = 32

func printBGP(w io.Writer, b *BGP) error {
	fmt.Fprintf(w, "\nBGP  state=%s  asn=%d  router-id=%s  announced=%s  installed=%d", b.State, b.ASN, addrOrDash(b.RouterID), prefixes(b.Announced), b.Installed)
	if b.Failed > 0 {
		fmt.Fprintf(w, "  failed=%d", b.Failed)
	}
	if b.PendingRemoval > 0 {
		fmt.Fprintf(w, "  pending-removal=%d", b.PendingRemoval)
	}
	if b.StaleRoutes > 0 {
		fmt.Fprintf(w, "  stale=%d", b.StaleRoutes)
	}
	fmt.Fprintln(w)
	if b.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", b.Error)
	}
	if len(b.Sessions) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tADDRESS\tASN\tSTATE\tSINCE\tRECEIVED\tINSTALLED\tREFUSED\tADVERTISED\tCUT OFF")
		for _, s := range b.Sessions {
			since := "-"
			if !s.Since.IsZero() {
				since = s.Since.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n",
				dash(s.Peer), addrOrDash(s.Address), s.ASN, s.State, since, s.Received, s.Installed, s.Refused, s.Advertised, dash(s.CutOff))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	} else if b.State == SectionRunning {
		fmt.Fprintln(w, "  no BGP peer yet")
	}
	for _, r := range b.Refused {
		fmt.Fprintf(w, "  refused %s from %s: %s", r.Prefix, r.Peer, r.Reason)
		if r.Conflict.IsValid() {
			fmt.Fprintf(w, " (%s)", r.Conflict)
		}
		fmt.Fprintln(w)
	}
	return nil
}

func printHealth(w io.Writer, h *Health) error {
	fmt.Fprintf(w, "\nHealth  state=%s  self=%s  members=%d  alive=%d  suspect=%d  dead=%d  unhealthy=%d  isolated=%t  last-detection=%s  max-detection=%s\n",
		h.State, dash(h.Self), h.Members, h.Alive, h.Suspect, h.Dead, h.Unhealthy, h.Isolated,
		seconds(h.LastDetectionSeconds), seconds(h.MaxDetectionSeconds))
	if h.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", h.Error)
	}
	if h.Isolated && h.IsolationReason != "" {
		fmt.Fprintf(w, "  isolated: %s (deaths are not acted on)\n", h.IsolationReason)
	}
	for _, r := range h.Refused {
		fmt.Fprintf(w, "  refused %s/%s at %s: %s %s", r.Cluster, r.Node, r.Address, r.Field, r.Reason)
		if r.Owner != "" {
			fmt.Fprintf(w, " (address of %s)", r.Owner)
		}
		fmt.Fprintf(w, " x%d\n", r.Count)
	}
	list := h.MemberList
	if len(list) > maxPrintedMembers {
		list = nil
		for _, m := range h.MemberList {
			if m.State != "alive" || !m.Healthy || m.Held {
				list = append(list, m)
			}
		}
		fmt.Fprintf(w, "  %d members alive and healthy not listed (-o json lists every member)\n", len(h.MemberList)-len(list))
	}
	if len(list) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MEMBER\tSTATE\tHEALTHY\tHELD\tSINCE")
	for _, m := range list {
		since := "-"
		if !m.Since.IsZero() {
			since = m.Since.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%t\t%t\t%s\n", m.Name, m.State, m.Healthy, m.Held, since)
	}
	return tw.Flush()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func addrOrDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "-"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func seconds(s float64) string {
	if s <= 0 {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

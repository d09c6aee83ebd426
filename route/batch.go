package route

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// batchSize is how many route requests go to the kernel in one sendmsg. The
// kernel answers only failures and the last request of a batch, so a batch
// costs two system calls; 128 failures with their echoed requests still
// fit a default socket receive buffer.
const batchSize = 128

// Change is one route of a batch given to Apply: installed or moved (as
// Upsert does) or, with Delete, removed (as Delete does).
type Change struct {
	Route  Route
	Delete bool
}

// batchSocket is the writer's own rtnetlink socket for batches: the
// netlink.Handle sends one request per call and waits for its answer.
type batchSocket struct {
	s   *nl.NetlinkSocket
	seq uint32
}

// openBatchSocket opens an rtnetlink socket in ns (netns.None(): the calling
// thread's namespace).
func openBatchSocket(ns netns.NsHandle) (*batchSocket, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	// Failures echo no request: smaller answers. Best effort, like the
	// larger buffer (SO_RCVBUFFORCE needs CAP_NET_ADMIN, which a writer has).
	_ = unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	_ = s.SetReceiveBufferSize(1<<20, true)
	// The kernel answers at once; a batch whose answer never comes is
	// redone one request at a time rather than hanging its caller.
	_ = s.SetReceiveTimeout(&unix.Timeval{Sec: 10})
	return &batchSocket{s: s}, nil
}

func (b *batchSocket) close() { b.s.Close() }

// Apply makes every change of changes with a few system calls per hundred
// routes instead of two per route. Changes for distinct prefixes are
// independent; for one prefix they apply in order. It returns nil when every
// change succeeded, else one error per change (nil where it succeeded),
// wrapped like those of Upsert and Delete: a prefix held by another owner's
// route is refused with a *ConflictError.
//
// A writer made with Config.Handle and no Config.Namespace has no socket of
// its own and applies the changes one by one.
func (w *Writer) Apply(ctx context.Context, changes []Change) []error {
	errs := make([]error, len(changes))
	failed := false
	note := func(i int, err error) {
		errs[i] = err
		failed = failed || err != nil
	}
	// Requests the kernel refused as existing (ours to replace, or another
	// owner's) and those whose answer was lost go through Upsert/Delete.
	var slow []int
	w.bmu.Lock()
	for start := 0; start < len(changes); start += batchSize {
		if err := ctx.Err(); err != nil {
			for i := start; i < len(changes); i++ {
				note(i, fmt.Errorf("route %s: %w", changes[i].Route.Prefix, err))
			}
			break
		}
		end := min(start+batchSize, len(changes))
		if w.batch == nil {
			for i := start; i < end; i++ {
				slow = append(slow, i)
			}
			continue
		}
		slow = append(slow, w.sendBatch(changes, start, end, note)...)
	}
	w.bmu.Unlock()
	for _, i := range slow {
		c := changes[i]
		if c.Delete {
			note(i, w.Delete(ctx, c.Route))
		} else {
			note(i, w.Upsert(ctx, c.Route))
		}
	}
	if !failed {
		return nil
	}
	return errs
}

// sendBatch sends changes[start:end] in one message and reads the answers;
// it returns the indexes to redo one by one. w.bmu is held.
func (w *Writer) sendBatch(changes []Change, start, end int, note func(int, error)) []int {
	var (
		buf    []byte
		last   int                // offset of the last request
		sent   = map[uint32]int{} // sequence number -> index
		redo   = map[int]bool{}
		failed = map[int]bool{}
	)
	for i := start; i < end; i++ {
		msg, err := w.request(changes[i])
		if err != nil {
			failed[i] = true
			note(i, err)
			continue
		}
		w.batch.seq++
		binary.NativeEndian.PutUint32(msg[8:12], w.batch.seq) // nlmsg_seq
		sent[w.batch.seq] = i
		last = len(buf)
		buf = append(buf, msg...)
	}
	if len(sent) == 0 {
		return nil
	}
	// Only the last request asks for an answer on success, so once its
	// answer is in, every failure before it has been reported.
	flags := binary.NativeEndian.Uint16(buf[last+6 : last+8]) // nlmsg_flags
	binary.NativeEndian.PutUint16(buf[last+6:last+8], flags|unix.NLM_F_ACK)
	lastSeq := w.batch.seq
	unknown := func() []int {
		// The state of the unanswered ones is unknown; Upsert and Delete
		// are idempotent.
		for _, i := range sent {
			redo[i] = true
		}
		return slices.Sorted(maps.Keys(redo))
	}
	if err := unix.Sendto(w.batch.s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return unknown()
	}
	for done := false; !done; {
		msgs, _, err := w.batch.s.Receive()
		if err != nil {
			return unknown() // overrun, or worse
		}
		for _, m := range msgs {
			i, ours := sent[m.Header.Seq]
			if m.Header.Type != unix.NLMSG_ERROR || !ours || len(m.Data) < 4 {
				continue
			}
			delete(sent, m.Header.Seq)
			done = done || m.Header.Seq == lastSeq
			c := changes[i]
			switch errno := syscall.Errno(-int32(binary.NativeEndian.Uint32(m.Data[0:4]))); {
			case errno == 0, c.Delete && errno == unix.ESRCH:
			case !c.Delete && errno == unix.EEXIST:
				redo[i] = true
			case c.Delete:
				failed[i] = true
				note(i, fmt.Errorf("delete route %s (cluster %s node %s): %w", c.Route.Prefix, c.Route.Cluster, c.Route.Node, errno))
			default:
				failed[i] = true
				note(i, fmt.Errorf("route %s via %s (cluster %s node %s): %w", c.Route.Prefix, c.Route.NextHop, c.Route.Cluster, c.Route.Node, errno))
			}
		}
	}
	// Unanswered requests before the last one succeeded, like the
	// answered ones neither failed nor to redo.
	w.mu.Lock()
	for i := start; i < end; i++ {
		if !redo[i] && !failed[i] {
			delete(w.refused, changes[i].Route.Prefix)
		}
	}
	w.mu.Unlock()
	return slices.Sorted(maps.Keys(redo))
}

// request serializes c as one rtnetlink request that asks for no answer
// on success.
func (w *Writer) request(c Change) ([]byte, error) {
	r := c.Route
	flags := unix.NLM_F_REQUEST
	var msg *nl.RtMsg
	var req *nl.NetlinkRequest
	if c.Delete {
		if !r.Prefix.IsValid() {
			return nil, fmt.Errorf("delete route %s (cluster %s node %s): invalid prefix", r.Prefix, r.Cluster, r.Node)
		}
		req = nl.NewNetlinkRequest(unix.RTM_DELROUTE, flags)
		msg = nl.NewRtDelMsg()
	} else {
		if !r.Prefix.IsValid() || !r.NextHop.IsValid() || r.Prefix.Addr().Is4() != r.NextHop.Unmap().Is4() {
			return nil, fmt.Errorf("route %s via %s (cluster %s node %s): invalid prefix or next hop", r.Prefix, r.NextHop, r.Cluster, r.Node)
		}
		// NLM_F_EXCL as Upsert's RouteAdd: any route with the key
		// fails, and goes through Upsert's ownership check.
		req = nl.NewNetlinkRequest(unix.RTM_NEWROUTE, flags|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
		msg = nl.NewRtMsg()
	}
	p := r.Prefix.Masked()
	msg.Family = unix.AF_INET
	if p.Addr().Is6() {
		msg.Family = unix.AF_INET6
	}
	msg.Dst_len = uint8(p.Bits())
	msg.Protocol = uint8(w.proto)
	attrs := []*nl.RtAttr{nl.NewRtAttr(unix.RTA_DST, p.Addr().AsSlice())}
	if !c.Delete {
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_GATEWAY, r.NextHop.Unmap().AsSlice()))
	}
	if w.table >= 256 {
		msg.Table = unix.RT_TABLE_UNSPEC
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(uint32(w.table))))
	} else {
		msg.Table = uint8(w.table)
	}
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req.Serialize(), nil
}

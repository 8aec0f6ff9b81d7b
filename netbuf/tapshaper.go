package netbuf

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// shapeHandle is the handle of the pacing qdisc (ftvmd's tbf): 0xf7:0, so that
// it is told apart from a root qdisc someone else installed.
var shapeHandle = netlink.MakeHandle(0xf7, 0)

// shaperCallTimeout bounds each netlink request of the shaper: the send and
// every receive of its reply (SO_SNDTIMEO, SO_RCVTIMEO). A reply the kernel never
// sends (netlink drops messages under memory pressure; vishvananda/netlink#254
// saw a receive block for an hour) then fails the call, which is counted, instead
// of holding up pacing for good. It cannot cut short a request the kernel is
// still working on (rtnetlink handles it inside the send, under the RTNL lock):
// the agent's applier (agent.latestCall) logs and counts one of those.
const shaperCallTimeout = 2 * time.Second

// withHandle runs f with a netlink handle in the calling thread's network
// namespace (as the package-level calls would open) whose sockets time out after
// shaperCallTimeout.
func withHandle(f func(h *netlink.Handle) error) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netbuf: netlink socket: %w", err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(shaperCallTimeout); err != nil {
		return fmt.Errorf("netbuf: netlink socket timeout: %w", err)
	}
	return f(h)
}

// linkByName is lookupLink on handle h: nil and no error when there is no such
// link.
func linkByName(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netbuf: look up link %q: %w", name, err)
	}
	return l, nil
}

// tapShaper is the netlink Shaper: a tbf qdisc as the root of one tap in the
// caller's network namespace. The tap is looked up by name at each call, so a tap
// created anew under the same name is shaped too.
type tapShaper struct{ name string }

// NewTapShaper returns the Shaper of tap name.
func NewTapShaper(name string) (Shaper, error) {
	if err := checkIfName(name); err != nil {
		return nil, err
	}
	return tapShaper{name: name}, nil
}

func (s tapShaper) link(h *netlink.Handle) (netlink.Link, error) {
	l, err := linkByName(h, s.name)
	switch {
	case err != nil:
		return nil, err
	case l == nil:
		return nil, fmt.Errorf("%w: %q", ErrTapNotFound, s.name)
	}
	return l, nil
}

// Set installs or changes the tbf (QdiscReplace: in place when it is there).
func (s tapShaper) Set(rate uint64, burst, limit uint32) error {
	if rate == 0 || burst == 0 || limit == 0 {
		return fmt.Errorf("netbuf: shape tap %q: rate %d B/s, burst %d B, limit %d B: none may be 0", s.name, rate, burst, limit)
	}
	return withHandle(func(h *netlink.Handle) error { return s.set(h, rate, burst, limit) })
}

func (s tapShaper) set(h *netlink.Handle, rate uint64, burst, limit uint32) error {
	l, err := s.link(h)
	if err != nil {
		return fmt.Errorf("netbuf: shape tap: %w", err)
	}
	q := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: shapeHandle, Parent: netlink.HANDLE_ROOT},
		Rate:       rate,
		Limit:      limit,
		// tbf takes its bucket as the time to send it at rate, in ticks.
		Buffer: netlink.Xmittime(rate, burst),
	}
	if err := h.QdiscReplace(q); err != nil {
		return fmt.Errorf("netbuf: shape tap %q to %d B/s (burst %d B, limit %d B): %w", s.name, rate, burst, limit, err)
	}
	return nil
}

// Clear deletes the root qdisc if it is ftvmd's tbf; a missing tap or qdisc is
// fine.
func (s tapShaper) Clear() error {
	return RemoveTapShaping(s.name)
}

// RemoveTapShaping deletes the pacing qdisc of tap name (one a killed agent left
// behind, say); a missing tap or qdisc is fine, a root qdisc of another kind is
// left alone.
func RemoveTapShaping(name string) error {
	return withHandle(func(h *netlink.Handle) error { return removeTapShaping(h, name) })
}

func removeTapShaping(h *netlink.Handle, name string) error {
	l, err := linkByName(h, name)
	if err != nil {
		return fmt.Errorf("netbuf: unshape tap: %w", err)
	}
	if l == nil {
		return nil
	}
	q, err := rootTbf(h, l)
	if err != nil || q == nil {
		return err
	}
	if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("netbuf: remove the pacing qdisc of tap %q: %w", name, err)
	}
	return nil
}

// rootTbf is ftvmd's tbf at l's root, nil if there is none.
func rootTbf(h *netlink.Handle, l netlink.Link) (*netlink.Tbf, error) {
	qs, err := h.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("netbuf: list qdiscs of %q: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		a := q.Attrs()
		if t, ok := q.(*netlink.Tbf); ok && a.Parent == netlink.HANDLE_ROOT && a.Handle == shapeHandle {
			return t, nil
		}
	}
	return nil, nil
}

// Counters reads the tap's transmit bytes and the tbf's queue counters.
func (s tapShaper) Counters() (ShaperCounters, error) {
	var c ShaperCounters
	err := withHandle(func(h *netlink.Handle) (err error) { c, err = s.counters(h); return err })
	return c, err
}

func (s tapShaper) counters(h *netlink.Handle) (ShaperCounters, error) {
	l, err := s.link(h)
	if err != nil {
		return ShaperCounters{}, fmt.Errorf("netbuf: tap counters: %w", err)
	}
	var c ShaperCounters
	if st := l.Attrs().Statistics; st != nil {
		c.TxBytes = st.TxBytes
	} else {
		return c, fmt.Errorf("netbuf: no statistics for %q", s.name)
	}
	q, err := rootTbf(h, l)
	if err != nil || q == nil {
		return c, err
	}
	c.Installed = true
	if st := q.Statistics; st != nil {
		if qs := st.Queue; qs != nil {
			c.Backlog, c.BacklogFrames = qs.Backlog, qs.Qlen
			c.Overlimits, c.Drops = uint64(qs.Overlimits), uint64(qs.Drops)
		}
		if b := st.Basic; b != nil {
			c.Packets = uint64(b.Packets)
		}
	}
	return c, nil
}

package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Access is what a read gets of a PHI column.
type Access uint8

// Accesses. The zero Access is Deny: a decision not made denies.
const (
	Deny Access = iota
	Plaintext
	MaskLast4
	MaskYear
	MaskRedact
)

// ParseAccess reads a read access: plaintext, deny, mask:last4,
// mask:year, mask:redact.
func ParseAccess(s string) (Access, error) {
	switch s {
	case "plaintext":
		return Plaintext, nil
	case "deny":
		return Deny, nil
	case "mask:last4":
		return MaskLast4, nil
	case "mask:year":
		return MaskYear, nil
	case "mask:redact":
		return MaskRedact, nil
	}
	if strings.HasPrefix(s, "mask:") {
		return Deny, fmt.Errorf("unknown mask %q (masks: mask:last4, mask:year, mask:redact)", s)
	}
	return Deny, fmt.Errorf("access %q is not one of plaintext, mask:last4, mask:year, mask:redact, deny", s)
}

func (a Access) String() string {
	switch a {
	case Plaintext:
		return "plaintext"
	case MaskLast4:
		return "mask:last4"
	case MaskYear:
		return "mask:year"
	case MaskRedact:
		return "mask:redact"
	}
	return "deny"
}

// Masked says the access serves a masked value.
func (a Access) Masked() bool { return a >= MaskLast4 }

// Window is a weekly time window in a time zone: the days it is open and
// its hours [Start, End) in minutes after midnight, local time.
type Window struct {
	Days       [7]bool // by time.Weekday
	Start, End int
	Loc        *time.Location
	text       string
}

func (w Window) String() string { return w.text }

// Contains says t falls in the window (local wall-clock time in w.Loc,
// so DST is PostgreSQL's and the law's: 08:00 is 08:00 on both sides of a
// change).
func (w Window) Contains(t time.Time) bool {
	l := t.In(w.Loc)
	if !w.Days[l.Weekday()] {
		return false
	}
	m := l.Hour()*60 + l.Minute()
	return m >= w.Start && m < w.End
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// ParseWindow reads "DAYS HH:MM-HH:MM ZONE": DAYS a day (Mon), a range
// (Mon-Fri, Fri-Mon wraps) or a comma list (Mon,Wed,Sat-Sun); the hours
// 00:00-24:00 with start before end; ZONE an IANA name (America/New_York).
func ParseWindow(s string) (Window, error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return Window{}, fmt.Errorf("window %q: want DAYS HH:MM-HH:MM ZONE, for example Mon-Fri 08:00-18:00 America/New_York", s)
	}
	w := Window{text: s}
	for _, part := range strings.Split(f[0], ",") {
		a, b, rng := strings.Cut(part, "-")
		from, ok1 := dayNames[strings.ToLower(a)]
		to := from
		ok2 := true
		if rng {
			to, ok2 = dayNames[strings.ToLower(b)]
		}
		if !ok1 || !ok2 {
			return Window{}, fmt.Errorf("window %q: %q is not a day or day range (Mon, Tue, … Sun; Mon-Fri)", s, part)
		}
		for d := from; ; d = (d + 1) % 7 {
			w.Days[d] = true
			if d == to {
				break
			}
		}
	}
	a, b, ok := strings.Cut(f[1], "-")
	var err1, err2 error
	if ok {
		w.Start, err1 = parseClock(a)
		w.End, err2 = parseClock(b)
	}
	if !ok || err1 != nil || err2 != nil || w.Start >= w.End {
		return Window{}, fmt.Errorf("window %q: hours %q must be HH:MM-HH:MM with the start before the end (00:00-24:00)", s, f[1])
	}
	loc, err := time.LoadLocation(f[2])
	if err != nil || f[2] == "Local" || f[2] == "" {
		return Window{}, fmt.Errorf("window %q: unknown time zone %q (an IANA name such as America/New_York or UTC)", s, f[2])
	}
	w.Loc = loc
	return w, nil
}

func parseClock(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 || hh > 24 || hh == 24 && mm != 0 {
		return 0, fmt.Errorf("bad time %q", s)
	}
	return hh*60 + mm, nil
}

// ParsePrefix reads a client CIDR (an address alone is its /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (10.0.0.0/8, 2001:db8::/32) or an address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Rule is one read or write rule of a column: who (roles), when (any of
// the windows; none = always) and from where (any of the prefixes; none =
// anywhere).
type Rule struct {
	// Index is the rule's position in its list, from 1.
	Index int
	Roles []string
	When  []Window
	From  []netip.Prefix
	// Access is a read rule's; Allow a write rule's.
	Access Access
	Allow  bool
}

// matches says the rule applies to the facts.
func (r *Rule) matches(f *Facts) bool {
	if !slices.ContainsFunc(r.Roles, f.member) {
		return false
	}
	if len(r.When) > 0 && !slices.ContainsFunc(r.When, func(w Window) bool { return w.Contains(f.Now) }) {
		return false
	}
	if len(r.From) > 0 {
		c := f.Client.Unmap()
		if !c.IsValid() || !slices.ContainsFunc(r.From, func(p netip.Prefix) bool { return p.Contains(c) }) {
			return false
		}
	}
	return true
}

// describe names the rule for decisions: its list and position, roles.
func (r *Rule) describe(list string) string {
	return fmt.Sprintf("%s rule %d (roles %s)", list, r.Index, strings.Join(r.Roles, ", "))
}

// BreakGlass lets the roles read a column in plaintext beyond its rules
// for TTL after SET phiproxy.break_glass = 'reason'.
type BreakGlass struct {
	Roles []string
	TTL   time.Duration
}

// Column is the policy of one PHI column. The zero Column denies reads
// and leaves writes to PostgreSQL.
type Column struct {
	Read       []Rule
	Write      []Rule
	Default    Access
	BreakGlass *BreakGlass
}

// Facts are what a decision depends on: the session user's role
// memberships (itself included, as pg_has_role … 'MEMBER' says), the
// client's address as the proxy sees it, the time, and the session's
// break-glass (zero Since: none).
type Facts struct {
	Roles  []string // sorted
	Client netip.Addr
	Now    time.Time
	// BreakGlassSince is when SET phiproxy.break_glass took effect.
	BreakGlassSince time.Time
}

func (f *Facts) member(role string) bool {
	_, ok := slices.BinarySearch(f.Roles, role)
	return ok
}

// Decision is a read decision for one column.
type Decision struct {
	Access Access
	// Reason is the rule that decided, or "default", or "break-glass".
	Reason string
	// BreakGlass: plaintext only because of the session's break-glass.
	BreakGlass bool
}

// ReadDecision decides what a read of the column returns: the first
// matching read rule, else the default; break-glass of one of its roles
// within its TTL turns anything short of plaintext into plaintext.
func (c *Column) ReadDecision(f *Facts) Decision {
	d := Decision{Access: c.Default, Reason: "default"}
	for i := range c.Read {
		if r := &c.Read[i]; r.matches(f) {
			d = Decision{Access: r.Access, Reason: r.describe("read")}
			break
		}
	}
	if d.Access != Plaintext && c.BreakGlass != nil && !f.BreakGlassSince.IsZero() &&
		f.Now.Sub(f.BreakGlassSince) < c.BreakGlass.TTL && slices.ContainsFunc(c.BreakGlass.Roles, f.member) {
		return Decision{Access: Plaintext, Reason: "break-glass (was " + d.Reason + ": " + d.Access.String() + ")", BreakGlass: true}
	}
	return d
}

// WriteDecision decides a write of the column: with no write rules
// PostgreSQL's GRANTs decide (allowed here); else the first matching rule,
// and no match denies.
func (c *Column) WriteDecision(f *Facts) (allowed bool, reason string) {
	if len(c.Write) == 0 {
		return true, "no write rules"
	}
	for i := range c.Write {
		if r := &c.Write[i]; r.matches(f) {
			return r.Allow, r.describe("write")
		}
	}
	return false, "no write rule matched"
}

package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"time"
)

// Filter selects events. Every set criterion must hold; within one
// criterion any of its values may match. The zero Filter matches every
// event.
type Filter struct {
	// Since (inclusive) and Until (exclusive) bound ts.
	Since, Until time.Time
	DBUsers      []string
	EndUsers     []string
	// Roles match an event's roles (its role memberships) or its role (the
	// current role after SET ROLE).
	Roles []string
	// Relations match schema.table, or table alone; Columns match
	// schema.table.column, table.column or column alone.
	Relations []string
	Columns   []string
	Actions   []string
	Decisions []string
	// Clients match the address part of client ("ip:port").
	Clients []netip.Prefix
	// Sessions match a session id or its prefix.
	Sessions []string
	// Completions also selects the completion record of a selected event
	// whose outcome came later (its rows are null; the record's ref names
	// it).
	Completions bool
}

// Empty reports whether f selects every event.
func (f *Filter) Empty() bool {
	return f.Since.IsZero() && f.Until.IsZero() && len(f.DBUsers)+len(f.EndUsers)+len(f.Roles)+len(f.Relations)+
		len(f.Columns)+len(f.Actions)+len(f.Decisions)+len(f.Clients)+len(f.Sessions) == 0
}

// maxPending bounds the selected events whose completion a Matcher waits
// for; beyond it the oldest are forgotten (their completion is then not
// selected). Completions follow their event within a batch or two.
const maxPending = 1 << 16

// Matcher applies a Filter to lines, decoding only the lines that can
// match: a line must hold the JSON text of one of each criterion's values
// before it is decoded, which keeps a search of a large trail fast. It
// is not safe for concurrent use.
type Matcher struct {
	f            Filter
	since, until string
	needles      [][][]byte // per criterion: the line must contain one
	empty        bool       // the filter selects everything: no decoding
	pending      map[uint64]struct{}
	order        []uint64 // pending seqs in order, to bound the map
	ev           Event
}

// NewMatcher compiles f.
func NewMatcher(f Filter) *Matcher {
	m := &Matcher{f: f, empty: f.Empty()}
	if !f.Since.IsZero() {
		m.since = FormatTime(f.Since)
	}
	if !f.Until.IsZero() {
		m.until = FormatTime(f.Until)
	}
	// Values appear in a line JSON-quoted; suffix and prefix matches drop
	// the quote on the open side.
	add := func(vals []string, trimOpen, trimClose bool) {
		if len(vals) == 0 {
			return
		}
		var group [][]byte
		for _, v := range vals {
			q := quote(v)
			if trimOpen {
				q = q[1:]
			}
			if trimClose {
				q = q[:len(q)-1]
			}
			group = append(group, q)
		}
		m.needles = append(m.needles, group)
	}
	add(f.DBUsers, false, false)
	add(f.EndUsers, false, false)
	add(f.Roles, false, false)
	add(f.Relations, true, false)
	add(f.Columns, true, false)
	add(f.Actions, false, false)
	add(f.Decisions, false, false)
	add(f.Sessions, false, true)
	if f.Completions && !m.empty {
		m.pending = map[uint64]struct{}{}
	}
	return m
}

func quote(s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // as the writer encodes
	enc.Encode(s)
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

var (
	errMalformed     = errors.New("malformed event")
	completionNeedle = []byte(`"action":"completion"`)
	tsNeedle         = []byte(`"ts":"`)
)

// Match reports whether line is selected. The event it returns, decoded
// when the line could match, is valid until the next Match; it is nil when
// the filter selects every line (nothing needed decoding). A line that
// does not decode is not selected (err says why).
func (m *Matcher) Match(line []byte) (*Event, bool, error) {
	if m.empty {
		if !json.Valid(line) { // cheap: no decoding, no allocation
			return nil, false, errMalformed
		}
		return nil, true, nil
	}
	if len(m.pending) > 0 && bytes.Contains(line, completionNeedle) {
		ev, err := m.decode(line)
		if err != nil {
			return nil, false, err
		}
		if _, ok := m.pending[ev.Ref]; ok && ev.Action == ActionCompletion {
			delete(m.pending, ev.Ref)
			return ev, true, nil
		}
	}
	if m.since != "" || m.until != "" {
		// ts is near the start of every line, fixed-width: compare it
		// before decoding anything.
		if i := bytes.Index(line, tsNeedle); i >= 0 && len(line) >= i+len(tsNeedle)+len(TimeFormat) {
			ts := line[i+len(tsNeedle) : i+len(tsNeedle)+len(TimeFormat)]
			if m.since != "" && string(ts) < m.since || m.until != "" && string(ts) >= m.until {
				return nil, false, nil
			}
		}
	}
	for _, group := range m.needles {
		found := false
		for _, n := range group {
			if bytes.Contains(line, n) {
				found = true
				break
			}
		}
		if !found {
			return nil, false, nil
		}
	}
	ev, err := m.decode(line)
	if err != nil {
		return nil, false, err
	}
	if !m.match(ev) {
		return ev, false, nil
	}
	if m.pending != nil && ev.Rows == nil && isStatement(ev.Action) {
		m.remember(ev.Seq)
	}
	return ev, true, nil
}

func (m *Matcher) decode(line []byte) (*Event, error) {
	m.ev = Event{}
	if err := json.Unmarshal(line, &m.ev); err != nil {
		return nil, err
	}
	return &m.ev, nil
}

func (m *Matcher) remember(seq uint64) {
	if len(m.order) >= maxPending {
		delete(m.pending, m.order[0])
		m.order = m.order[1:]
	}
	m.pending[seq] = struct{}{}
	m.order = append(m.order, seq)
}

func isStatement(action string) bool {
	switch action {
	case ActionRead, ActionWrite, ActionDelete, ActionCopyIn, ActionCopyOut, ActionDenied:
		return true
	}
	return false
}

func (m *Matcher) match(ev *Event) bool {
	f := &m.f
	switch {
	case m.since != "" && ev.TS < m.since,
		m.until != "" && ev.TS >= m.until,
		len(f.DBUsers) > 0 && !anyOf(f.DBUsers, func(v string) bool { return ev.DBUser == v }),
		len(f.EndUsers) > 0 && !anyOf(f.EndUsers, func(v string) bool { return ev.EndUser == v }),
		len(f.Roles) > 0 && !anyOf(f.Roles, func(v string) bool { return ev.Role == v || contains(ev.Roles, v) }),
		len(f.Relations) > 0 && !anyOf(f.Relations, func(v string) bool { return anyOf(ev.Relations, func(r string) bool { return nameMatch(r, v) }) }),
		len(f.Columns) > 0 && !anyOf(f.Columns, func(v string) bool { return anyOf(ev.Columns, func(c string) bool { return nameMatch(c, v) }) }),
		len(f.Actions) > 0 && !contains(f.Actions, ev.Action),
		len(f.Decisions) > 0 && !contains(f.Decisions, ev.Decision),
		len(f.Sessions) > 0 && !anyOf(f.Sessions, func(v string) bool { return strings.HasPrefix(ev.Session, v) }),
		len(f.Clients) > 0 && !clientIn(ev.Client, f.Clients):
		return false
	}
	return true
}

func anyOf(vals []string, ok func(string) bool) bool {
	for _, v := range vals {
		if ok(v) {
			return true
		}
	}
	return false
}

func contains(vals []string, s string) bool {
	return anyOf(vals, func(v string) bool { return v == s })
}

// nameMatch: name is schema.table[.column]; v is it, or its tail at a dot.
func nameMatch(name, v string) bool {
	return name == v || strings.HasSuffix(name, v) && name[len(name)-len(v)-1] == '.'
}

func clientIn(client string, nets []netip.Prefix) bool {
	var addr netip.Addr
	if ap, err := netip.ParseAddrPort(client); err == nil {
		addr = ap.Addr()
	} else if a, err := netip.ParseAddr(client); err == nil {
		addr = a
	} else {
		return false
	}
	addr = addr.Unmap()
	for _, p := range nets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ScanStats counts what a Scan read.
type ScanStats struct {
	Lines, Matched int64
	// Unreadable lines could not be decoded (run audit verify);
	// Partial is a last line still being written, or cut off.
	Unreadable, Partial int64
}

// Scan streams the lines of r that m selects to fn, with flat memory; ev
// is nil when m did not need to decode the line (an empty filter). It
// stops at the first error of fn or of the reader.
func Scan(r *Reader, m *Matcher, fn func(l *Line, ev *Event) error) (ScanStats, error) {
	var st ScanStats
	for r.Next() {
		l := r.Line()
		st.Lines++
		if l.Partial {
			st.Partial++
			continue
		}
		ev, ok, err := m.Match(l.Bytes)
		if err != nil {
			st.Unreadable++
			continue
		}
		if !ok {
			continue
		}
		st.Matched++
		if err := fn(l, ev); err != nil {
			return st, err
		}
	}
	return st, r.Err()
}

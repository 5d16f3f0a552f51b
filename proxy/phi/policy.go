package phi

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/policy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Policy (DESIGN §7; docs/policy.md). Each execution of a statement that
// touches PHI is decided before it is sent (client goroutine): a read of
// a column the role may not read, a predicate on a column it may not read
// in plaintext (WHERE ssn = …, a join, GROUP BY, count(DISTINCT …): by
// probing, a masked role would learn the value), or a write the write
// rules deny is refused with 42501 naming the column and the rule, and
// never reaches PostgreSQL. Masks are applied by the result transform
// after decryption (rowX): they are computed where the transform is built
// and are part of what a cached transform is reused for.

// WithClock sets the clock the policy's time windows and break-glass TTLs
// read (tests; default time.Now).
func WithClock(now func() time.Time) Option { return func(p *Proxy) { p.now = now } }

// refreshRoles re-reads the role memberships of every live session's
// user (at a reload, p.mu held), so that a GRANT or REVOKE applies from
// each session's next statement.
func (p *Proxy) refreshRoles(ctx context.Context, dsn string) error {
	byUser := map[string][]*session{}
	p.sessions.Range(func(k, _ any) bool {
		s := k.(*session)
		byUser[s.info.User] = append(byUser[s.info.User], s)
		return true
	})
	for user, ss := range byUser {
		pc, err := p.catalogConn(ctx, dsn)
		if err != nil {
			return err
		}
		roles, err := config.RoleMemberships(ctx, pc.Conn(), user)
		pc.Release()
		if err != nil {
			return fmt.Errorf("role memberships of %s: %w", user, err)
		}
		sort.Strings(roles)
		for _, s := range ss {
			s.roles.Store(&roles)
		}
	}
	return nil
}

// decision is the policy's verdict on one execution, for the audit trail.
type decision struct {
	// Outcome is allowed or masked; Reason names the rules that decided
	// (column: rule); BreakGlass: plaintext only through break-glass.
	Outcome, Reason string
	BreakGlass      bool
}

// facts are the session's facts for a decision now.
func (s *session) facts() policy.Facts {
	f := policy.Facts{Roles: *s.roles.Load(), Now: s.p.clock(), BreakGlassSince: s.breakGlassSince()}
	if a, ok := s.info.ClientAddr.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			f.Client = ip.Unmap()
		}
	}
	return f
}

// clock is the policy's clock.
func (p *Proxy) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

// colPolicy is the policy of a PHI column; a column the snapshot does not
// know is denied (the zero policy).
func colPolicy(snap *snapshot, ident string) *policy.Column {
	if p := snap.policies[ident]; p != nil {
		return p
	}
	return &policy.Column{} // deny reads; writes are PostgreSQL's
}

// decide applies the policy to an execution of st about to be sent.
func (s *session) decide(snap *snapshot, st *rewrite.Statement) (*decision, error) {
	if st == nil || !st.TouchesPHI {
		return nil, nil
	}
	f := s.facts()
	d := decision{Outcome: "allowed"}
	// The reasons are for the audit trail: without an Observer nothing
	// reads them, and the statement path allocates nothing for them.
	record := s.obs != nil
	var reasons []string
	var seen []string
	note := func(ident string, pd policy.Decision) {
		d.BreakGlass = d.BreakGlass || pd.BreakGlass
		if !record || slices.Contains(seen, ident) {
			return
		}
		seen = append(seen, ident)
		reasons = append(reasons, shortIdent(ident)+": "+pd.Reason)
	}
	read := func(ident, what string) error {
		pd := colPolicy(snap, ident).ReadDecision(&f)
		note(ident, pd)
		switch {
		case pd.Access == policy.Deny:
			return pgerr.Newf(pgerr.InsufficientPrivilege, "permission denied for column %s: %s denies reading it", ident, pd.Reason).
				WithHint("phiproxy policy (" + what + "): leave the column out, or ask for a rule that lets your role read it")
		case pd.Access.Masked():
			d.Outcome = "masked"
		}
		return nil
	}
	for _, r := range st.Results {
		if err := read(r.Column.Ident, "select list"); err != nil {
			return nil, err
		}
	}
	if st.Copy != nil {
		for _, fl := range st.Copy.Fields {
			if fl.Column == nil {
				continue
			}
			if st.Copy.In {
				if ok, why := colPolicy(snap, fl.Column.Ident).WriteDecision(&f); !ok {
					return nil, writeDenied(fl.Column.Ident, why)
				}
			} else if err := read(fl.Column.Ident, "COPY column list"); err != nil {
				return nil, err
			}
		}
	}
	for _, ident := range st.Predicates {
		pd := colPolicy(snap, ident).ReadDecision(&f)
		note(ident, pd)
		if pd.Access != policy.Plaintext {
			return nil, pgerr.Newf(pgerr.InsufficientPrivilege, "permission denied to compare, join or group on column %s: %s gives your role %s, not plaintext", ident, pd.Reason, pd.Access).
				WithHint("phiproxy policy: a role that may not read a PHI column in plaintext may not filter on it either (probing would reveal it); look the row up by another column")
		}
	}
	for _, ident := range st.Writes {
		if ok, why := colPolicy(snap, ident).WriteDecision(&f); !ok {
			return nil, writeDenied(ident, why)
		}
	}
	if !record {
		return nil, nil
	}
	if d.BreakGlass {
		reasons = append([]string{"break-glass: " + s.breakGlassText()}, reasons...)
	}
	if len(reasons) > 0 {
		d.Reason = boundReason(strings.Join(reasons, "; "))
	}
	out := d // only a recorded decision leaves the stack
	return &out, nil
}

// breakGlassReason refuses SET phiproxy.break_glass with a reason under
// ten characters: a reason is what the audit trail shows an auditor.
func breakGlassReason(st *rewrite.Statement) error {
	if st.Effects&rewrite.EffectBreakGlass == 0 || st.SetBreakGlass == "" {
		return nil
	}
	if len(strings.TrimSpace(st.SetBreakGlass)) < 10 {
		return pgerr.New(pgerr.InvalidParameterValue, "phiproxy.break_glass needs a reason of at least 10 characters").
			WithHint("SET phiproxy.break_glass = 'why you need the plaintext now'; it is recorded in the audit trail")
	}
	return nil
}

// breakGlassText is the session's break-glass reason for the audit trail
// (client goroutine).
func (s *session) breakGlassText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.eff.breakGlass
}

func writeDenied(ident, why string) *pgerr.Error {
	return pgerr.Newf(pgerr.InsufficientPrivilege, "permission denied to write column %s: %s", ident, why).
		WithHint("phiproxy policy: the column's write rules do not allow your role")
}

// shortIdent is "table.column" of "schema.table.column".
func shortIdent(ident string) string {
	if i := strings.IndexByte(ident, '.'); i >= 0 {
		return ident[i+1:]
	}
	return ident
}

// boundReason keeps an audit reason short.
func boundReason(s string) string {
	if len(s) > 500 {
		return s[:497] + "..."
	}
	return s
}

// masksFor are the accesses of results now (server or client goroutine
// where a result transform is built): Plaintext, a mask, or Deny (the
// transform then fails the statement at its first row).
//
// The slice is buf, the calling goroutine's scratch (s.masksClient or
// s.masksServer), valid until its next call: a transform built from it
// keeps a copy (newRowX).
func (s *session) masksFor(snap *snapshot, results []rewrite.Result, buf *[]policy.Access) []policy.Access {
	if len(results) == 0 {
		return nil
	}
	f := s.facts()
	out := slices.Grow((*buf)[:0], len(results))[:len(results)]
	for i, r := range results {
		out[i] = colPolicy(snap, r.Column.Ident).ReadDecision(&f).Access
	}
	*buf = out
	return out
}

// sameMasks says a cached transform's masks are the ones in force.
func sameMasks(a, b []policy.Access) bool { return slices.Equal(a, b) }

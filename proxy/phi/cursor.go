package phi

import (
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/phiproxy/phiproxy/policy"

	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/rewrite"
)

// SQL cursors (DECLARE … CURSOR, FETCH, MOVE, CLOSE). The planner plans a
// DECLARE as its query: its Statement's Results describe the rows of
// every FETCH of the cursor. FETCH names the cursor, not the query, so
// the session keeps each cursor's DECLARE by name, as the server confirmed
// it: the set changes only on the server's answers (a DECLARE's or
// CLOSE's CommandComplete, the end of the transaction, ROLLBACK TO), in
// the mirror, with PostgreSQL's rules:
//
//   - a cursor without WITH HOLD is closed when its transaction ends;
//   - a WITH HOLD cursor survives the COMMIT of its transaction, not its
//     rollback (nor the rollback of the savepoint it was declared in); once
//     committed it survives later rollbacks;
//   - CLOSE ALL and DISCARD ALL close every cursor, and so does an
//     extended-protocol Close of a portal of the same name (cursors and
//     portals share one namespace).
//
// The rows of a FETCH are matched to the cursor when they arrive (server
// goroutine), after the answers to everything sent before it: the set is
// then exactly the server's, so no speculation is needed. A FETCH of a
// cursor the set does not hold (declared by a function, closed, never
// declared) gets no decryption: its ciphertext meets the safety net.

// cursorSet is the session's open cursors (part of the mirror: guarded by
// session.mu, written by the server goroutine only).
type cursorSet struct {
	open map[string]openCursor
}

// openCursor is one cursor as its DECLARE planned it.
type openCursor struct {
	st *rewrite.Statement
	// inTx: declared in the transaction in progress, at savepoint depth
	// level (the mirror's len(saves) then).
	inTx  bool
	level int
}

// completed applies a completed DECLARE, CLOSE or DISCARD ALL at
// savepoint depth level.
func (c *cursorSet) completed(st *rewrite.Statement, level int) {
	switch {
	case st.Declare != nil:
		if c.open == nil {
			c.open = map[string]openCursor{}
		}
		c.open[st.Declare.Name] = openCursor{st: st, inTx: true, level: level}
	case st.CloseAll:
		c.open = nil
	case st.CloseCursor != "":
		delete(c.open, st.CloseCursor)
	}
}

// close forgets name (an extended-protocol Close of a portal).
func (c *cursorSet) close(name string) { delete(c.open, name) }

// commit ends the transaction: cursors without WITH HOLD close, the others
// now belong to no transaction.
func (c *cursorSet) commit() {
	for name, o := range c.open {
		if !o.st.Declare.Hold {
			delete(c.open, name)
			continue
		}
		o.inTx = false
		c.open[name] = o
	}
}

// rollback ends the transaction: only WITH HOLD cursors committed before
// it stay.
func (c *cursorSet) rollback() {
	for name, o := range c.open {
		if o.inTx || !o.st.Declare.Hold {
			delete(c.open, name)
		}
	}
}

// rollbackTo rolls back to the savepoint at index i of the mirror's stack
// (i < 0: a savepoint the mirror does not know, so every cursor of the
// transaction may be gone): cursors declared after it close.
func (c *cursorSet) rollbackTo(i int) {
	for name, o := range c.open {
		if o.inTx && (i < 0 || o.level > i) {
			delete(c.open, name)
		}
	}
}

// release releases the savepoint at index i: cursors declared after it
// now belong to the level below.
func (c *cursorSet) release(i int) {
	for name, o := range c.open {
		if o.inTx && o.level > i {
			o.level = i
			c.open[name] = o
		}
	}
}

// cursor returns the DECLARE of an open cursor, nil if the session has no
// such cursor the proxy knows of (server goroutine).
func (s *session) cursor(name string) *rewrite.Statement {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.m.cursors.open[name]; ok {
		return o.st
	}
	return nil
}

// cursorResults returns the result plan of a FETCH (st.Fetch) for output
// formats text (nil: not known yet), or a refusal when the session's
// settings forbid serving it (server goroutine).
func (s *session) cursorResults(st *rewrite.Statement, text func(int) bool) ([]rewrite.Result, *pgerr.Error) {
	decl := s.cursor(st.Fetch)
	if decl == nil || st.Move {
		return nil, nil
	}
	// The policy and the settings may have changed since the DECLARE.
	for i, a := range s.masksFor(s.p.cur.Load(), decl.Results, &s.masksServer) {
		if a == policy.Deny {
			return nil, pgerr.Newf(pgerr.InsufficientPrivilege, "permission denied for column %s", decl.Results[i].Column.Ident).
				WithHint("phiproxy policy: your role may not read this PHI column; leave it out of the cursor's select list")
		}
	}
	if err := s.settingsRefusal(decl, text); err != nil {
		return nil, asRefusal(err)
	}
	return decl.Results, nil
}

// cursorX is the transform describing SQL cursor name (a Describe 'P' of
// it): nil if the proxy knows no such cursor.
func (s *session) cursorX(name string, fields []pgproto3.FieldDescription) *rowX {
	decl := s.cursor(name)
	if decl == nil {
		return nil
	}
	return s.newRowX(decl.Results, func(i int) int16 {
		if i < len(fields) {
			return fields[i].Format
		}
		return 0
	}, s.masksFor(s.p.cur.Load(), decl.Results, &s.masksServer))
}

// fieldText reports text format for the output positions of a
// RowDescription.
func fieldText(fields []pgproto3.FieldDescription) func(int) bool {
	return func(i int) bool { return i >= len(fields) || fields[i].Format == 0 }
}

// portalX is the result transform of an extended-protocol portal. A
// FETCH portal's comes from its cursor when its rows arrive (the cursor
// is bound at execution, not at Parse or Bind); it is kept in pt (the
// server goroutine's copy of the entry).
func (s *session) cursorPortalX(pt *portal) (*rowX, *pgerr.Error) {
	if pt.ps == nil || pt.ps.st == nil || pt.ps.st.Fetch == "" || pt.fetchDone {
		return pt.x, nil
	}
	pt.fetchDone = true
	results, err := s.cursorResults(pt.ps.st, resultText(pt.formats))
	if err != nil {
		return nil, err
	}
	pt.x = s.newRowX(results, func(i int) int16 { return formatAt(pt.formats, i) }, s.masksFor(s.p.cur.Load(), results, &s.masksServer))
	return pt.x, nil
}

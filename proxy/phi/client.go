package phi

import (
	"encoding/hex"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/proxy/codec"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Type OIDs of the ciphertext columns and arrays sent upstream.
const (
	byteaOID      = 17
	byteaArrayOID = 1001
)

// ClientMessage implements proxy.Interceptor (client goroutine).
func (s *session) ClientMessage(msg pgproto3.FrontendMessage, out *proxy.Out) error {
	switch m := msg.(type) {
	case *pgproto3.Query:
		return s.query(m, out)
	case *pgproto3.Parse:
		return s.parse(m, out)
	case *pgproto3.Bind:
		return s.bind(m, out)
	case *pgproto3.Describe:
		e := &entry{kind: entryDescribe, describe: m.ObjectType}
		if m.ObjectType == 'S' && !s.isSkipping() {
			ps, _, err := s.lookupStmt(m.Name, out)
			if err != nil {
				return err
			}
			e.ps = ps
		} else {
			e.portal = s.portals[m.Name]
		}
		if _, err := s.push(e, out); err != nil {
			return err
		}
	case *pgproto3.Execute:
		pt := s.portals[m.Portal]
		if pt.x != nil && pt.x.epoch != s.p.epoch.Load() {
			pt.x = s.fresh(pt.x) // decided before the last BumpDecisionEpoch
			s.portals[m.Portal] = pt
		}
		if pt.ps != nil {
			s.startCopyIn([]*rewrite.Statement{pt.ps.st}, false)
		}
		queued, err := s.push(&entry{kind: entryExecute, portal: pt}, out)
		if err != nil {
			return err
		}
		if queued && pt.ps != nil && pt.ps.st != nil {
			if err := s.batchEffects(pt.ps.st, out); err != nil {
				return err
			}
		}
	case *pgproto3.Close:
		queued, err := s.push(&entry{kind: entryClose, closeKind: m.ObjectType, closeName: m.Name}, out)
		if err != nil {
			return err
		}
		if queued {
			if m.ObjectType == 'S' {
				s.setStmt(m.Name, nil)
			} else {
				delete(s.portals, m.Name)
			}
		}
	case *pgproto3.Sync:
		if _, err := s.push(&entry{kind: entrySync}, out); err != nil {
			return err
		}
	case *pgproto3.FunctionCall:
		if _, err := s.push(&entry{kind: entryFunction}, out); err != nil {
			return err
		}
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		return s.copyInMessage(msg, out)
	}
	return out.ForwardUnchanged()
}

// query handles a simple-protocol Query.
func (s *session) query(m *pgproto3.Query, out *proxy.Out) error {
	s.settleStmts()
	snap := s.p.cur.Load()
	q := &queryRun{poisonAt: -1, sql: m.String}
	e := &entry{kind: entryQuery, q: q}
	s.cin = nil
	// Settings that change how the text reads come first: under them the
	// planner's own verdict cannot be trusted.
	err := s.textRefusal(snap, m.String)
	var plan *rewrite.Plan
	if err == nil {
		var sess rewrite.Session
		if sess, err = s.planSession(&snap, m.String, out); err == nil {
			plan, err = snap.planner.Plan(m.String, sess)
		}
	}
	if err != nil {
		return s.refuseQuery(e, "", err, out)
	}
	q.endUser = plan.EndUser
	for _, st := range plan.Statements {
		e.effectful = e.effectful || effectful(st)
	}
	if plan.PassThrough {
		q.stmts = plan.Statements
		for _, st := range plan.Statements {
			s.stmtEffects(st)
		}
		if _, err := s.push(e, out); err != nil {
			return err
		}
		return out.ForwardUnchanged()
	}
	q.stmts = append(q.one[:0:len(q.one)], plan.Statements...)
	for i, st := range q.stmts {
		st, err := s.execute(st, out)
		if err == nil {
			err = s.checkStatement(snap, st)
		}
		if err == nil {
			err = s.settingsRefusal(st, textFormats)
		}
		if err == nil {
			err = copyInAlone(q.stmts, i)
		}
		if err != nil {
			return s.refuseAt(e, plan.SQL, i, err, out)
		}
		q.stmts[i] = st
		// In order: an EXECUTE sees a PREPARE earlier in the string.
		s.stmtEffects(st)
	}
	text, bad, err := s.render(plan.SQL, q.stmts, len(q.stmts))
	if err != nil {
		return s.refuseAt(e, plan.SQL, bad, err, out)
	}
	s.startCopyIn(q.stmts, false)
	if _, err := s.push(e, out); err != nil {
		return err
	}
	return s.forwardQuery(text, out)
}

// forwardQuery sends a Query with text in place of the client's.
func (s *session) forwardQuery(text string, out *proxy.Out) error {
	s.queryOut.String = text
	err := out.Forward(&s.queryOut)
	s.queryOut.String = ""
	return err
}

// refuseAt refuses statement i of a Query: the statements before it are
// sent rendered, followed by a poison DO block in its place, so that
// PostgreSQL runs (and, in the implicit transaction, rolls back) what it
// would have run before failing at that statement.
func (s *session) refuseAt(e *entry, sql string, i int, refusal error, out *proxy.Out) error {
	q := e.q
	prefix := ""
	if i > 0 {
		text, bad, err := s.render(sql, q.stmts, i)
		if err != nil {
			return s.refuseAt(e, sql, bad, err, out)
		}
		prefix = text
		if t := strings.TrimRight(prefix, " \t\r\n"); !strings.HasSuffix(t, ";") {
			prefix = t + ";"
		}
	}
	// Data the client streams for a refused COPY FROM is dropped.
	s.startCopyIn(q.stmts[i:i+1], true)
	q.refused = q.stmts[i]
	q.stmts = q.stmts[:i]
	return s.refuseQuery(e, prefix, refusal, out)
}

func (s *session) refuseQuery(e *entry, prefix string, refusal error, out *proxy.Out) error {
	pe := asRefusal(refusal)
	q := e.q
	q.poisonAt = len(q.stmts)
	q.poison = pe
	if _, err := s.push(e, out); err != nil {
		return err
	}
	return s.forwardQuery(prefix+poisonDO(pe.Code), out)
}

// asRefusal makes err a client-facing ERROR; anything without a SQLSTATE
// is XX000 with a generic message (its text is not for the client).
func asRefusal(err error) *pgerr.Error {
	pe := pgerr.As(err)
	if pe == nil {
		return pgerr.New(pgerr.Internal, "internal error in phiproxy").WithCause(err)
	}
	if pe.Severity != pgerr.SeverityError {
		c := *pe
		c.Severity = pgerr.SeverityError
		pe = &c
	}
	return clientSafe(pe)
}

type replacement struct {
	off, n int
	text   string
	slot   *rewrite.Slot
}

// render returns sql up to the start of statement n (all of it if n is
// len(stmts)) with the slots and edits of stmts[:n] applied. On a slot
// error it returns the index of the statement that failed.
func (s *session) render(sql string, stmts []*rewrite.Statement, n int) (string, int, error) {
	end := len(sql)
	if n < len(stmts) {
		end = stmts[n].Offset
	}
	reps := s.reps[:0]
	for _, st := range stmts[:n] {
		for i := range st.Slots {
			reps = append(reps, replacement{off: st.Slots[i].Offset, n: st.Slots[i].Length, slot: &st.Slots[i]})
		}
		for _, ed := range st.Edits {
			reps = append(reps, replacement{off: ed.Offset, n: ed.Length, text: ed.Text})
		}
	}
	defer func() {
		clear(reps) // the slots point into the plan
		s.reps = reps[:0]
	}()
	if len(reps) == 0 {
		return sql[:end], 0, nil
	}
	slices.SortStableFunc(reps, func(a, b replacement) int { return a.off - b.off })
	b := s.qbuf[:0]
	defer func() { s.qbuf = b[:0] }()
	pos := 0
	for _, r := range reps {
		if r.off < pos || r.off+r.n > end {
			// The planner never gives overlapping slots (rewrite's
			// FuzzPlan checks it); refuse rather than panic if it did.
			return "", stmtIndex(stmts, r.off), pgerr.New(pgerr.FeatureNotSupported, "phiproxy cannot rewrite this statement: two values bound for PHI columns overlap").
				WithHint("write each value bound for a PHI column as a separate literal or parameter")
		}
		b = append(b, sql[pos:r.off]...)
		if r.slot != nil {
			start := len(b)
			var err error
			if b, err = s.appendSlot(b, r.slot); err != nil {
				return "", stmtIndex(stmts, r.off), err
			}
			if len(b) > start && rewrite.NeedsSpace(string(b[len(b)-1:]), sql, r.off+r.n) {
				b = append(b, ' ')
			}
		} else {
			b = append(b, r.text...)
		}
		pos = r.off + r.n
	}
	b = append(b, sql[pos:end]...)
	return string(b), 0, nil
}

func stmtIndex(stmts []*rewrite.Statement, off int) int {
	for i := len(stmts) - 1; i >= 0; i-- {
		if stmts[i].Offset <= off {
			return i
		}
	}
	return 0
}

// appendSlot canonicalises and encrypts a literal and appends it to dst as
// a bytea literal.
func (s *session) appendSlot(dst []byte, sl *rewrite.Slot) ([]byte, error) {
	if sl.Array {
		lit, err := s.fillArraySlot(sl)
		return append(dst, lit...), err
	}
	// The literal's text, its canonical plaintext and the envelope follow
	// each other in the session's scratch; the plaintexts are cleared
	// before returning.
	buf := append(s.cbuf[:0], sl.Text...)
	n := len(sl.Text)
	text := buf[:n:n]
	canon, err := s.codec().AppendBound(buf[n:], sl.Column.Type, codec.Coercion{Cast: sl.Cast, Assign: sl.Assign}, 0, codec.TextFormat, text)
	if err != nil {
		clear(buf[:cap(buf)])
		s.cbuf = buf[:0]
		return dst, codec.WithColumn(err, sl.Column.Ident)
	}
	c, err := s.p.keys.Cipher(sl.Column.Key)
	var ct []byte
	if err == nil {
		ct, err = c.AppendEncrypt(canon[len(canon):], canon)
	}
	if err == nil {
		dst = appendByteaEscapeLiteral(dst, ct)
	}
	clear(text)
	clear(canon)
	if need := n + len(canon) + len(ct); cap(buf) < need {
		buf = make([]byte, 0, need+need/2) // all three fit next time
	}
	s.cbuf = buf[:0]
	return dst, err
}

// appendByteaEscapeLiteral appends b as E'\\x<hex>'::bytea, as
// codec.ByteaEscapeLiteral returns it.
func appendByteaEscapeLiteral(dst, b []byte) []byte {
	dst = append(dst, `E'\\x`...)
	dst = hex.AppendEncode(dst, b)
	return append(dst, "'::bytea"...)
}

// fillArraySlot canonicalises each element of an array literal (col =
// ANY('{…}')), encrypts it and returns ARRAY[E'\\x…'::bytea, …]::bytea[]:
// NULL elements stay NULL, an empty array is '{}'::bytea[]. Elements are
// each a bytea literal, so the text means the same whatever
// standard_conforming_strings is, and planning it again adds no slot.
func (s *session) fillArraySlot(sl *rewrite.Slot) (string, error) {
	elems, err := s.codec().CanonicalArrayBound(sl.Column.Type, codec.Coercion{Cast: sl.Cast}, codec.TextFormat, []byte(sl.Text))
	if err != nil {
		return "", codec.WithColumn(err, sl.Column.Ident)
	}
	if len(elems) == 0 {
		return "'{}'::bytea[]", nil
	}
	c, err := s.p.keys.Cipher(sl.Column.Key)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("ARRAY[")
	for i, el := range elems {
		if i > 0 {
			b.WriteString(", ")
		}
		if el == nil {
			b.WriteString("NULL")
			continue
		}
		ct, err := c.AppendEncrypt(s.cbuf[:0], el)
		if err != nil {
			return "", err
		}
		b.WriteString(codec.ByteaEscapeLiteral(ct))
		s.cbuf = ct[:0]
	}
	b.WriteString("]::bytea[]")
	return b.String(), nil
}

// parse handles an extended-protocol Parse.
func (s *session) parse(m *pgproto3.Parse, out *proxy.Out) error {
	if s.isSkipping() {
		return out.ForwardUnchanged() // the server ignores it until Sync
	}
	s.settleStmts()
	snap := s.p.cur.Load()
	ps := &prepared{name: m.Name, sql: m.Query}
	e := &entry{kind: entryParse, ps: ps}
	err := s.textRefusal(snap, m.Query)
	var plan *rewrite.Plan
	if err == nil {
		var sess rewrite.Session
		if sess, err = s.planSession(&snap, m.Query, out); err == nil {
			plan, err = snap.planner.Plan(m.Query, sess)
		}
	}
	if err == nil && !plan.PassThrough && len(plan.Statements) > 1 {
		err = pgerr.New(pgerr.SyntaxError, "cannot insert multiple commands into a prepared statement")
	}
	var st *rewrite.Statement
	if err == nil && len(plan.Statements) == 1 {
		st, err = s.execute(plan.Statements[0], out)
		if err == nil {
			err = s.checkStatement(snap, st)
		}
		if err == nil {
			err = s.settingsRefusal(st, nil)
		}
	}
	text := m.Query
	if err == nil && !plan.PassThrough {
		text, _, err = s.render(plan.SQL, []*rewrite.Statement{st}, 1)
	}
	if err != nil {
		if s.obs != nil {
			r := &refusedStmt{st: st}
			if plan != nil {
				r.endUser = plan.EndUser
				if r.st == nil && len(plan.Statements) == 1 {
					r.st = plan.Statements[0]
				}
			}
			e.refused = r
		}
		return s.poison(e, &pgproto3.Parse{Name: m.Name, Query: poisonParse}, "42601", err, out, func() {
			if m.Name == "" {
				s.setStmt("", nil)
			}
		})
	}
	ps.st = st
	ps.endUser = plan.EndUser
	ps.declared = append([]uint32(nil), m.ParameterOIDs...)
	fwd := m
	if st != nil && len(st.Params) > 0 {
		max := len(m.ParameterOIDs)
		for _, p := range st.Params {
			max = maxInt(max, p.Number)
		}
		oids := make([]uint32, max)
		copy(oids, m.ParameterOIDs)
		for _, p := range st.Params {
			if p.Array {
				oids[p.Number-1] = byteaArrayOID
			} else {
				oids[p.Number-1] = byteaOID
			}
		}
		fwd = &pgproto3.Parse{Name: m.Name, Query: text, ParameterOIDs: oids}
	} else if text != m.Query {
		fwd = &pgproto3.Parse{Name: m.Name, Query: text, ParameterOIDs: m.ParameterOIDs}
	}
	queued, err := s.push(e, out)
	if err != nil {
		return err
	}
	if queued {
		s.setStmt(m.Name, ps)
	}
	if fwd == m {
		return out.ForwardUnchanged()
	}
	return out.Forward(fwd)
}

// declaredAt is the type OID the client declared for parameter i, 0 if
// it left it to the server.
func declaredAt(declared []uint32, i int) uint32 {
	if i < len(declared) {
		return declared[i]
	}
	return 0
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// poison sends msg (which the server is certain to refuse with code)
// instead of the client's message, so the server enters its error path
// (skip to Sync, failed transaction) by itself; the client gets refusal.
func (s *session) poison(e *entry, msg pgproto3.FrontendMessage, code string, refusal error, out *proxy.Out, onQueued func()) error {
	e.poison = asRefusal(refusal)
	e.poisonCode = code
	if s.obs != nil && e.refused == nil {
		// For the Observer: a Bind's statement (Parse sets its own).
		e.refused = &refusedStmt{}
		if ps := e.portal.ps; ps != nil {
			e.refused.st, e.refused.endUser = ps.st, ps.endUser
		}
	}
	queued, err := s.push(e, out)
	if err != nil {
		return err
	}
	if queued && onQueued != nil {
		onQueued()
	}
	return out.Forward(msg)
}

// bind handles an extended-protocol Bind: PHI parameters are decoded from
// the client's format, canonicalised, encrypted and sent as binary bytea.
func (s *session) bind(m *pgproto3.Bind, out *proxy.Out) error {
	if s.isSkipping() {
		return out.ForwardUnchanged()
	}
	s.settleStmts()
	ps, known, err := s.lookupStmt(m.PreparedStatement, out)
	if err != nil {
		return err
	}
	e := &entry{kind: entryBind, portal: portal{ps: ps}}
	if !known {
		// PostgreSQL has no such statement either (the namespaces agree),
		// so it would refuse the Bind: refuse it here, so that no
		// parameter is sent unencrypted to a statement we do not know.
		return s.poison(e, &pgproto3.Bind{DestinationPortal: m.DestinationPortal, PreparedStatement: poisonStatement}, "26000",
			pgerr.Newf(pgerr.InvalidSQLStatementName, "prepared statement %q does not exist", m.PreparedStatement), out, nil)
	}
	fwd := m
	if ps != nil && ps.st != nil {
		if err := s.settingsRefusal(ps.st, resultText(m.ResultFormatCodes)); err != nil {
			return s.poison(e, &pgproto3.Bind{DestinationPortal: m.DestinationPortal, PreparedStatement: poisonStatement}, "26000", err, out, nil)
		}
		e.portal.x = s.resultX(ps, m.ResultFormatCodes)
		if len(ps.st.Params) > 0 && len(m.Parameters) > 0 {
			b, err := s.encryptParams(ps, m)
			if err != nil {
				return s.poison(e, &pgproto3.Bind{DestinationPortal: m.DestinationPortal, PreparedStatement: poisonStatement}, "26000", err, out, nil)
			}
			fwd = b
		}
	}
	queued, err := s.push(e, out)
	if err != nil {
		return err
	}
	if queued {
		s.portals[m.DestinationPortal] = e.portal
	}
	if fwd == m {
		return out.ForwardUnchanged()
	}
	err = out.Forward(fwd)
	// fwd is the session's scratch Bind: drop its references to the
	// client's values and our ciphertexts.
	clear(s.bparams)
	*fwd = pgproto3.Bind{}
	return err
}

// resultX returns the result transform of ps for the given result format
// codes, cached for the common case of the same codes every time.
func (s *session) resultX(ps *prepared, formats []int16) *rowX {
	if len(ps.st.Results) == 0 {
		return nil
	}
	if ps.lastX != nil && ps.lastX.epoch == s.p.epoch.Load() && equalFormats(ps.lastFormats, formats) {
		return ps.lastX
	}
	x := s.newRowX(ps.st.Results, func(i int) int16 { return formatAt(formats, i) })
	ps.lastFormats = append(ps.lastFormats[:0], formats...)
	ps.lastX = x
	return x
}

func equalFormats(a, b []int16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// formatAt is the format code of column or parameter i given a list of
// codes: none means text, one applies to all.
func formatAt(codes []int16, i int) int16 {
	switch len(codes) {
	case 0:
		return codec.TextFormat
	case 1:
		return codes[0]
	}
	if i < len(codes) {
		return codes[i]
	}
	return codec.TextFormat
}

// encryptParams returns m with its PHI parameters encrypted, in the
// session's scratch Bind (valid until the next call).
func (s *session) encryptParams(ps *prepared, m *pgproto3.Bind) (*pgproto3.Bind, error) {
	st := ps.st
	params := append(s.bparams[:0], m.Parameters...)
	formats := s.bformats[:0]
	for i := range m.Parameters {
		formats = append(formats, formatAt(m.ParameterFormatCodes, i))
	}
	s.bparams, s.bformats = params, formats
	cd := s.codec()
	buf := s.cbuf[:0]
	offs := s.coffs[:0]
	for _, p := range st.Params {
		i := p.Number - 1
		if i >= len(params) || params[i] == nil {
			continue
		}
		c, err := s.p.keys.Cipher(p.Column.Key)
		if err != nil {
			return nil, err
		}
		start := len(buf)
		if p.Array {
			elems, err := cd.CanonicalArrayBound(p.Column.Type, codec.Coercion{Cast: p.Cast}, formats[i], params[i])
			if err != nil {
				return nil, codec.WithColumn(err, p.Column.Ident)
			}
			cts := make([][]byte, len(elems))
			for j, el := range elems {
				if el == nil {
					continue
				}
				if cts[j], err = c.Encrypt(el); err != nil {
					return nil, err
				}
			}
			buf = append(buf, codec.EncodeByteaArray(cts, codec.BinaryFormat)...)
		} else {
			canon, err := cd.AppendBound(buf, p.Column.Type, codec.Coercion{Cast: p.Cast, Assign: p.Assign}, declaredAt(ps.declared, i), formats[i], params[i])
			if err != nil {
				clear(buf[:cap(buf)]) // a partial plaintext may be there
				return nil, codec.WithColumn(err, p.Column.Ident)
			}
			mid := len(canon)
			buf, err = c.AppendEncrypt(canon, canon[start:mid])
			if err != nil {
				clear(canon[:cap(canon)])
				return nil, err
			}
			// Drop the plaintext: move the envelope down over it.
			n := copy(buf[start:], buf[mid:])
			clear(buf[start+n : len(buf)])
			buf = buf[:start+n]
		}
		offs = append(offs, i, start, len(buf))
		formats[i] = codec.BinaryFormat
	}
	for k := 0; k < len(offs); k += 3 {
		params[offs[k]] = buf[offs[k+1]:offs[k+2]:offs[k+2]]
	}
	s.cbuf, s.coffs = buf[:0], offs[:0]
	s.bindOut = pgproto3.Bind{DestinationPortal: m.DestinationPortal, PreparedStatement: m.PreparedStatement,
		ParameterFormatCodes: formats, Parameters: params, ResultFormatCodes: m.ResultFormatCodes}
	return &s.bindOut, nil
}

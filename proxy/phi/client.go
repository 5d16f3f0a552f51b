package phi

import (
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/column"
	"github.com/phiproxy/phiproxy/observe"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
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
		} else if pt, ok := s.portals[m.Name]; ok || m.Name == "" {
			e.portal = pt
		} else {
			e.cursor = m.Name // psycopg 3 describes its cursor so
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
		e := &entry{kind: entryExecute, portal: pt}
		if !s.isSkipping() {
			s.announceExecute(e)
		}
		queued, err := s.push(e, out)
		if err != nil {
			s.skipAnnounced(e, 0)
			return err
		}
		if !queued {
			s.skipAnnounced(e, 0)
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
	plan, watch, err := s.planText(&snap, m.String, out)
	if err == nil {
		s.cover(watch)
	}
	if err != nil {
		if s.obs != nil {
			// For the audit trail: what a refused text names.
			q.refused = snap.planner.Refused(m.String)
		}
		return s.refuseQuery(e, "", err, out)
	}
	q.tags = tagsOf(plan)
	for _, st := range plan.Statements {
		e.effectful = e.effectful || effectful(st)
		e.nameDDL = e.nameDDL || st.NameDDL
	}
	for _, st := range plan.Statements {
		if err := breakGlassReason(st); err != nil {
			return s.refuseQuery(e, "", err, out)
		}
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
			err = s.admit(st)
		}
		var dec *decision
		if err == nil {
			dec, err = s.decide(snap, st)
		}
		if err == nil {
			err = copyInAlone(q.stmts, i)
		}
		if err != nil {
			return s.refuseAt(e, plan.SQL, i, err, out)
		}
		q.stmts[i] = st
		if dec != nil {
			if q.decisions == nil {
				q.decisions = make([]*decision, len(q.stmts))
			}
			q.decisions[i] = dec
		}
		// In order: an EXECUTE sees a PREPARE earlier in the string.
		s.stmtEffects(st)
	}
	var t0 time.Time
	if s.tm != nil {
		t0 = time.Now()
	}
	text, bad, err := s.render(plan.SQL, q.stmts, len(q.stmts))
	if err != nil {
		return s.refuseAt(e, plan.SQL, bad, err, out)
	}
	if s.tm != nil {
		s.tm.ObserveCrypto(CryptoEncrypt, time.Since(t0))
	}
	s.startCopyIn(q.stmts, false)
	s.announceQuery(q)
	if _, err := s.push(e, out); err != nil {
		s.skipAnnounced(e, 0)
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

// render returns sql up to the start of statement n (all of it if n is
// len(stmts)) with the slots and edits of stmts[:n] applied, rendered by
// rewrite's Renderer into the session's scratch. On a slot error it
// returns the index of the statement that failed.
func (s *session) render(sql string, stmts []*rewrite.Statement, n int) (string, int, error) {
	return s.rend.Text(&s.qbuf, sql, stmts, n, s.appendSlot)
}

// appendSlot seals a literal (package column: canonicalise, encrypt,
// wipe) and appends it to dst as a bytea literal.
func (s *session) appendSlot(dst []byte, sl *rewrite.Slot) ([]byte, error) {
	col, err := s.sealColumn(sl.Column)
	if err != nil {
		return dst, err
	}
	s.enc.Codec = s.codec()
	if sl.Array {
		return s.appendArraySlot(dst, col, sl)
	}
	in := column.Input{Format: codec.TextFormat, Coercion: codec.Coercion{Cast: sl.Cast, Assign: sl.Assign}}
	ct, err := s.enc.AppendSealString(s.cbuf[:0], col, in, sl.Text)
	if err != nil {
		return dst, err
	}
	s.cbuf = ct[:0]
	return appendByteaEscapeLiteral(dst, ct), nil
}

// sealColumn is the encoder's view of a PHI column, with its current
// cipher.
func (s *session) sealColumn(pc rewrite.PHIColumn) (column.Column, error) {
	c, err := s.p.keys.Cipher(pc.Key)
	return column.Column{Ident: pc.Ident, Type: pc.Type, Cipher: c}, err
}

// appendByteaEscapeLiteral appends b as E'\\x<hex>'::bytea, as
// codec.ByteaEscapeLiteral returns it.
func appendByteaEscapeLiteral(dst, b []byte) []byte {
	dst = append(dst, `E'\\x`...)
	dst = hex.AppendEncode(dst, b)
	return append(dst, "'::bytea"...)
}

// appendArraySlot seals each element of an array literal (col =
// ANY('{…}')) and appends ARRAY[E'\\x…'::bytea, …]::bytea[]: NULL elements
// stay NULL, an empty array is '{}'::bytea[]. Elements are each a bytea
// literal, so the text means the same whatever standard_conforming_strings
// is, and planning it again adds no slot.
func (s *session) appendArraySlot(dst []byte, col column.Column, sl *rewrite.Slot) ([]byte, error) {
	text := []byte(sl.Text)
	defer clear(text)
	elems, err := s.enc.SealArray(col, column.Input{Format: codec.TextFormat, Coercion: codec.Coercion{Cast: sl.Cast}}, text)
	if err != nil {
		return dst, err
	}
	if len(elems) == 0 {
		return append(dst, "'{}'::bytea[]"...), nil
	}
	dst = append(dst, "ARRAY["...)
	for i, el := range elems {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		if el == nil {
			dst = append(dst, "NULL"...)
			continue
		}
		dst = appendByteaEscapeLiteral(dst, el)
	}
	return append(dst, "]::bytea[]"...), nil
}

// planText plans a statement text of a Query or Parse and says what
// observed columns it touches. Settings that change how the text reads
// come first: under them the planner's own verdict cannot be trusted.
// *snap is replaced when planning needs a catalog the session's changes
// made stale (planSession).
func (s *session) planText(snap **snapshot, sql string, out *proxy.Out) (*rewrite.Plan, []observe.Record, error) {
	if err := s.textRefusal(*snap, sql); err != nil {
		return nil, nil, err
	}
	sess, err := s.planSession(snap, sql, out)
	if err != nil {
		return nil, nil, err
	}
	plan, err := s.plan(*snap, sql, sess)
	if err != nil {
		return plan, nil, err
	}
	return plan, s.watchText(*snap, sql, sess), nil
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
	plan, watch, err := s.planText(&snap, m.Query, out)
	ps.watch = watch
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
				r.tags = tagsOf(plan)
				if r.st == nil && len(plan.Statements) == 1 {
					r.st = plan.Statements[0]
				}
			}
			if r.st == nil || !r.st.TouchesPHI {
				r.st = snap.planner.Refused(m.Query)
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
	ps.tags = tagsOf(plan)
	ps.declared = append([]uint32(nil), m.ParameterOIDs...)
	fwd := m
	if st != nil && len(st.Params) > 0 {
		n := len(m.ParameterOIDs)
		for _, p := range st.Params {
			n = max(n, p.Number)
		}
		oids := make([]uint32, n)
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
			e.refused.st, e.refused.tags = ps.st, ps.tags
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
	if ps != nil {
		s.cover(ps.watch)
	}
	fwd := m
	if ps != nil && ps.st != nil {
		err := s.settingsRefusal(ps.st, resultText(m.ResultFormatCodes))
		if err == nil {
			err = s.admit(ps.st)
		}
		if err == nil {
			e.portal.dec, err = s.decide(s.p.cur.Load(), ps.st)
		}
		if err != nil {
			return s.poison(e, &pgproto3.Bind{DestinationPortal: m.DestinationPortal, PreparedStatement: poisonStatement}, "26000", err, out, nil)
		}
		e.portal.x = s.resultX(ps, m.ResultFormatCodes)
		if ps.st.Fetch != "" {
			e.portal.formats = slices.Clone(m.ResultFormatCodes) // see portalX
		}
		if len(ps.st.Params) > 0 && len(m.Parameters) > 0 {
			var t0 time.Time
			if s.tm != nil {
				t0 = time.Now()
			}
			b, err := s.encryptParams(ps, m)
			if s.tm != nil {
				s.tm.ObserveCrypto(CryptoEncrypt, time.Since(t0))
			}
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
	masks := s.masksFor(s.p.cur.Load(), ps.st.Results, &s.masksClient)
	if ps.lastX != nil && ps.lastX.epoch == s.p.epoch.Load() && equalFormats(ps.lastFormats, formats) && sameMasks(ps.lastX.masks, masks) {
		return ps.lastX
	}
	x := s.newRowX(ps.st.Results, func(i int) int16 { return formatAt(formats, i) }, masks)
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
	s.enc.Codec = s.codec()
	buf := s.cbuf[:0]
	offs := s.coffs[:0]
	for _, p := range st.Params {
		i := p.Number - 1
		if i >= len(params) || params[i] == nil {
			continue
		}
		col, err := s.sealColumn(p.Column)
		if err != nil {
			return nil, err
		}
		start := len(buf)
		if p.Array {
			elems, err := s.enc.SealArray(col, column.Input{Format: formats[i], Coercion: codec.Coercion{Cast: p.Cast}}, params[i])
			if err != nil {
				return nil, err
			}
			buf = append(buf, codec.EncodeByteaArray(elems, codec.BinaryFormat)...)
		} else {
			in := column.Input{Format: formats[i], Declared: declaredAt(ps.declared, i), Coercion: codec.Coercion{Cast: p.Cast, Assign: p.Assign}}
			if buf, err = s.enc.AppendSeal(buf, col, in, params[i]); err != nil {
				return nil, err
			}
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

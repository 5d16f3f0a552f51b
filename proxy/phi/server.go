package phi

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

func safetyErr(column string) *pgerr.Error {
	return pgerr.Newf(pgerr.Internal, "phiproxy refused to return ciphertext in result column %s", column).
		WithHint("the value carries the PHI envelope header but the statement has no decryption planned for it; select the configured PHI column itself")
}

func columnName(names []string, i int) string {
	if i < len(names) && names[i] != "" {
		return fmt.Sprintf("%q", names[i])
	}
	return fmt.Sprintf("%d", i+1)
}

// ServerMessage implements proxy.Interceptor (server goroutine).
func (s *session) ServerMessage(msg pgproto3.BackendMessage, out *proxy.Out) error {
	if z, ok := msg.(*pgproto3.ReadyForQuery); ok {
		return s.ready(z, out)
	}
	if ps, ok := msg.(*pgproto3.ParameterStatus); ok {
		s.setParameter(ps.Name, ps.Value)
		return s.parameterStatus(ps, out)
	}
	if async, err := s.asyncMessage(msg, out); async {
		return err
	}
	switch m := msg.(type) {
	case *pgproto3.CommandComplete:
		s.trackCompletion(m)
	case *pgproto3.CopyOutResponse:
		s.tx.copyOut = true
	case *pgproto3.ErrorResponse:
		if s.dropping {
			s.trackDroppedError()
		}
	}
	e := s.front()
	if e != nil && e.kind == entryProbe {
		s.probeMessage(msg)
		return nil
	}
	if s.dropping {
		s.track(e, msg)
		return nil
	}
	if e == nil {
		// Nothing expected (an asynchronous error): still guard rows and
		// redact errors.
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			return s.row(nil, nil, nil, m, out)
		case *pgproto3.ErrorResponse:
			if s.redactError(m) {
				return out.Forward(m)
			}
		}
		return out.ForwardUnchanged()
	}
	if e.kind == entryInjected {
		// The answer to our own poison Query.
		if _, ok := msg.(*pgproto3.ErrorResponse); ok {
			s.mu.Lock()
			s.m.errored()
			s.mu.Unlock()
		}
		return nil
	}
	switch m := msg.(type) {
	case *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.CloseComplete:
		s.track(e, msg)
	case *pgproto3.ParameterDescription:
		if e.kind == entryDescribe && e.ps != nil && e.ps.st != nil {
			oids := make([]uint32, len(m.ParameterOIDs))
			copy(oids, m.ParameterOIDs)
			for _, p := range e.ps.st.Params {
				if d := declaredAt(e.ps.declared, p.Number-1); d != 0 && p.Number-1 < len(oids) {
					oids[p.Number-1] = d // PostgreSQL describes a declared type as declared
					continue
				}
				if p.Number-1 < len(oids) {
					if p.Array {
						oids[p.Number-1] = codec.ArrayOID(p.Column.Type)
					} else {
						oids[p.Number-1] = codec.OID(p.Column.Type)
					}
				}
			}
			return out.Forward(&pgproto3.ParameterDescription{ParameterOIDs: oids})
		}
	case *pgproto3.RowDescription:
		return s.rowDescription(e, m, out)
	case *pgproto3.NoData:
		if e.kind == entryDescribe {
			s.pop()
		}
	case *pgproto3.DataRow:
		if s.obs != nil {
			return s.observedRow(e, m, out)
		}
		return s.dataRow(e, m, out)
	case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
		s.track(e, msg)
	case *pgproto3.CopyOutResponse:
		return s.copyOutStart(e, m, out)
	case *pgproto3.CopyDone:
		s.coutRaw = false
		if s.cout != nil {
			err := s.copyOutData(&pgproto3.CopyData{}, true, out)
			if s.cout == nil || err != nil {
				return err
			}
			s.cout.release()
			s.cout = nil
		}
	case *pgproto3.CopyData:
		if s.cout != nil {
			return s.copyOutData(m, false, out)
		}
		if s.coutRaw {
			return s.copyGuardMessage(m, out)
		}
	case *pgproto3.ErrorResponse:
		return s.errorResponse(e, m, out)
	case *pgproto3.FunctionCallResponse:
		return s.functionResult(m, out)
	}
	return out.ForwardUnchanged()
}

// dataRow handles a DataRow that answers e (server goroutine).
func (s *session) dataRow(e *entry, m *pgproto3.DataRow, out *proxy.Out) error {
	switch e.kind {
	case entryQuery:
		if q := e.q; q.idx < len(q.stmts) && q.stmts[q.idx].Tag == "EXPLAIN" {
			return s.explainRow(m, out)
		}
		return s.timedRow(s.queryRowX(e.q), nil, s.qtypes, m, out)
	case entryExecute:
		if e.portal.ps != nil && e.portal.ps.st != nil && e.portal.ps.st.Tag == "EXPLAIN" {
			return s.explainRow(m, out)
		}
		var names []string
		if e.portal.ps != nil {
			names = e.portal.ps.names
		}
		x, err := s.portalX(e)
		if err != nil {
			return s.fail(err, out)
		}
		return s.timedRow(x, names, executeTypes(e), m, out)
	}
	return s.row(nil, nil, nil, m, out)
}

// timedRow is row, timed for the Timer when the row has PHI to decrypt.
func (s *session) timedRow(x *rowX, names []string, types []uint32, m *pgproto3.DataRow, out *proxy.Out) error {
	if s.tm == nil || x == nil {
		return s.row(x, names, types, m, out)
	}
	t0 := time.Now()
	err := s.row(x, names, types, m, out)
	s.tm.ObserveCrypto(CryptoDecrypt, time.Since(t0))
	return err
}

// fail ends the current statement with err: the client gets err, and
// everything the server sends until ReadyForQuery is dropped.
func (s *session) fail(err *pgerr.Error, out *proxy.Out) error {
	s.dropping = true
	if s.obs != nil {
		s.observeFailed(err)
	}
	return out.Forward(proxy.ErrorResponse(err))
}

func (s *session) errorResponse(e *entry, m *pgproto3.ErrorResponse, out *proxy.Out) error {
	s.cout, s.coutRaw = nil, false
	s.serverError(e)
	// fwd is what the client gets: the server's error as it arrived (with
	// any envelope in it redacted), or our refusal in its place.
	var fwd *pgproto3.ErrorResponse
	if s.redactError(m) {
		fwd = m
	}
	if pe := s.copyFailed(m); pe != nil {
		fwd = proxy.ErrorResponse(pe)
		m = fwd
	}
	switch e.kind {
	case entryQuery:
		q := e.q
		q.failed = true
		s.skipAnnounced(e, q.idx+1)
		if q.poison != nil && q.idx == q.poisonAt && m.Code == q.poison.Code.String() && m.Message == poisonMessage {
			fwd = proxy.ErrorResponse(q.poison)
			s.observeRefusal(q.refused, q.tags, false, q.poison)
		} else {
			s.observeEnd(e, Execution{Rows: -1, SQLSTATE: clientCode(m, fwd)})
		}
		return forwardError(fwd, out)
	case entrySync, entryFunction:
		return forwardError(fwd, out)
	}
	if e.poison != nil && m.Code == e.poisonCode {
		fwd = proxy.ErrorResponse(e.poison)
		s.observeEntryRefusal(e)
	} else if e.kind == entryExecute {
		s.observeEnd(e, Execution{Rows: -1, SQLSTATE: clientCode(m, fwd)})
	}
	skipped := s.skipToSync()
	if e.kind == entryBind && (e.poison == nil || m.Code != e.poisonCode) {
		// The Bind's Execute, if announced, is the failed execution.
		if len(skipped) > 0 && skipped[0].kind == entryExecute && skipped[0].portal.ps == e.portal.ps {
			ex := takeAnnounced(&skipped[0])
			ex.SQLSTATE = clientCode(m, fwd)
			s.obs.End(ex)
		} else {
			s.observeBindError(e, clientCode(m, fwd))
		}
	}
	for i := range skipped {
		s.skipAnnounced(&skipped[i], 0)
	}
	return forwardError(fwd, out)
}

// skipToSync drops the expected responses up to the next Sync and returns
// the dropped entries that hold an announced execution: after an
// error the server skips everything until Sync (server goroutine).
func (s *session) skipToSync() (announced []entry) {
	s.mu.Lock()
	for s.fifo.n > 0 && s.fifo.front().kind != entrySync {
		if f := s.fifo.front(); f.announced != nil {
			announced = append(announced, *f)
		}
		s.fifo.pop()
	}
	if s.fifo.n == 0 {
		s.skipping = true
	}
	s.mu.Unlock()
	s.haveHead = false
	return announced
}

// track is the bookkeeping of the server's answers that confirm what the
// client's messages did — statements parsed and closed, statements
// completed with their effects on the session state, errors — done
// whether the message is forwarded or dropped (server goroutine).
func (s *session) track(e *entry, msg pgproto3.BackendMessage) {
	if e == nil {
		if _, ok := msg.(*pgproto3.ErrorResponse); ok {
			s.serverError(nil)
		}
		return
	}
	switch m := msg.(type) {
	case *pgproto3.ParseComplete:
		if e.kind == entryParse && e.ps != nil {
			s.mu.Lock()
			s.confirmed[e.ps.name] = e.ps
			s.mu.Unlock()
		}
		s.pop()
	case *pgproto3.CloseComplete:
		if e.kind == entryClose && e.closeKind == 'S' {
			s.mu.Lock()
			delete(s.confirmed, e.closeName)
			s.mu.Unlock()
		}
		if e.kind == entryClose && e.closeKind == 'P' {
			s.mu.Lock()
			s.m.cursors.close(e.closeName) // one namespace with SQL cursors
			s.mu.Unlock()
		}
		s.pop()
	case *pgproto3.BindComplete:
		s.pop()
	case *pgproto3.RowDescription, *pgproto3.NoData:
		if e.kind == entryDescribe {
			s.pop()
		}
	case *pgproto3.CommandComplete:
		switch e.kind {
		case entryQuery:
			q := e.q
			if q.idx < len(q.stmts) {
				s.observeEnd(e, Execution{Rows: tagRows(m.CommandTag)})
				s.completed(q.stmts[q.idx], m.CommandTag)
			}
			q.idx++
			q.x = nil
		case entryExecute:
			if e.portal.ps != nil {
				s.observeEnd(e, Execution{Rows: tagRows(m.CommandTag)})
				s.completed(e.portal.ps.st, m.CommandTag)
			}
			s.pop()
		}
	case *pgproto3.EmptyQueryResponse:
		switch e.kind {
		case entryQuery:
			e.q.idx++
		case entryExecute:
			s.pop()
		}
	case *pgproto3.PortalSuspended:
		if e.kind == entryExecute {
			s.observeEnd(e, Execution{Rows: -1, Suspended: true})
			s.pop()
		}
	case *pgproto3.ErrorResponse:
		if e.kind == entryQuery || e.kind == entryExecute {
			s.observeEnd(e, Execution{Rows: -1, SQLSTATE: m.Code})
		}
		if e.kind == entryQuery {
			e.q.failed = true
		}
		s.serverError(e)
		if e.kind != entryQuery && e.kind != entrySync && e.kind != entryFunction {
			for _, f := range s.skipToSync() {
				s.skipAnnounced(&f, 0)
			}
		}
	}
}

// serverError records an ErrorResponse in the mirror (server goroutine).
// A Parse of the unnamed statement drops the old one even when it fails.
func (s *session) serverError(e *entry) {
	s.mu.Lock()
	s.m.errored()
	s.publishIdentity()
	if e != nil && e.kind == entryParse && e.ps != nil && e.ps.name == "" {
		delete(s.confirmed, "")
	}
	s.mu.Unlock()
}

// completed applies a statement's effects once the server completed it
// (server goroutine).
func (s *session) completed(st *rewrite.Statement, tag []byte) {
	if st == nil || st.Effects == 0 && !st.StateUnknown && st.Declare == nil && st.CloseCursor == "" && !st.CloseAll {
		return
	}
	s.mu.Lock()
	s.m.completed(st, string(tag))
	s.publishIdentity()
	s.confirmStmt(st)
	s.requestRefresh()
	s.mu.Unlock()
}

// requestRefresh asks for the catalog refresh committed DDL needs (s.mu
// held, so that a statement waiting for the refresh sees the request).
func (s *session) requestRefresh() {
	if s.m.refreshReq {
		s.m.refreshReq = false
		s.p.catalogChanged()
	}
}

// forwardError sends our ErrorResponse fwd to the client, or the server's
// as it arrived when fwd is nil.
func forwardError(fwd *pgproto3.ErrorResponse, out *proxy.Out) error {
	if fwd == nil {
		return out.ForwardUnchanged()
	}
	return out.Forward(fwd)
}

// ready handles ReadyForQuery: the end of a Query, Sync or FunctionCall
// cycle.
func (s *session) ready(z *pgproto3.ReadyForQuery, out *proxy.Out) error {
	if err := s.outcomeUnknown(z); err != nil {
		return err
	}
	status := z.TxStatus
	s.mu.Lock()
	s.m.ready(status)
	s.requestRefresh()
	s.publishIdentity()
	// Pop up to and including the entry this ReadyForQuery answers
	// (entries before it were answered, skipped or dropped).
	for s.fifo.n > 0 {
		f := s.fifo.front()
		k, eff, ddl := f.kind, f.effectful, f.nameDDL
		s.fifo.pop()
		if k == entryQuery || k == entrySync || k == entryFunction {
			s.doneCycles.Add(1)
			if eff {
				s.pending--
			}
			if ddl {
				s.pendingDDL--
			}
			break
		}
		if k == entryInjected || k == entryProbe {
			// Our own cycle: the client never asked.
			if k == entryProbe {
				s.probeReady(status)
				s.publishIdentity()
			}
			s.mu.Unlock()
			s.haveHead = false
			s.signal()
			return nil
		}
	}
	if s.dropping && status == 'T' {
		// The client saw the statement fail: its transaction must be
		// failed too. The next client message first makes it so upstream.
		status = 'E'
		s.overlay = true
	}
	s.mu.Unlock()
	s.signal()
	s.haveHead = false
	s.dropping = false
	s.cout = nil
	s.ex, s.exDone = nil, false
	if status != z.TxStatus {
		return out.Forward(&pgproto3.ReadyForQuery{TxStatus: status})
	}
	return out.ForwardUnchanged()
}

// rowDescription rewrites the PHI columns' types to their logical types
// and cross-checks the planned PHI positions against the columns' origin.
func (s *session) rowDescription(e *entry, m *pgproto3.RowDescription, out *proxy.Out) error {
	s.rememberTypes(e, m)
	var x *rowX
	var results []rewrite.Result
	switch e.kind {
	case entryQuery:
		q := e.q
		if q.idx < len(q.stmts) {
			results = q.stmts[q.idx].Results
			if q.stmts[q.idx].Fetch != "" {
				var err *pgerr.Error
				if results, err = s.cursorResults(q.stmts[q.idx], fieldText(m.Fields)); err != nil {
					return s.fail(err, out)
				}
			}
		}
		x = s.queryX(results, m.Fields)
		if q.idx < len(q.stmts) && len(q.stmts[q.idx].Redact) > 0 {
			// A copy: queryX's rowX is shared by the statements with
			// these results.
			cp := rowX{}
			if x != nil {
				cp = *x
			}
			cp.redact = q.stmts[q.idx].Redact
			x = &cp
		}
		q.x = x
	case entryDescribe:
		s.pop()
		if e.describe == 'S' {
			if e.ps != nil && e.ps.st != nil {
				results = e.ps.st.Results
				if e.ps.st.Fetch != "" {
					var err *pgerr.Error
					if results, err = s.cursorResults(e.ps.st, nil); err != nil {
						return s.fail(err, out)
					}
				}
				x = s.newRowX(results, func(int) int16 { return codec.TextFormat }, nil)
				names := make([]string, len(m.Fields))
				for i, f := range m.Fields {
					names[i] = string(f.Name)
				}
				e.ps.names = names
			}
		} else if e.cursor != "" {
			x = s.cursorX(e.cursor, m.Fields)
		} else {
			var err *pgerr.Error
			if x, err = s.cursorPortalX(&e.portal); err != nil {
				return s.fail(err, out)
			}
		}
	case entryExecute:
		// A RowDescription during Execute (FETCH through a cursor): no plan
		// for it; the safety net guards its rows.
	}
	cat := s.p.cur.Load().cat
	changed := false
	for i := range m.Fields {
		f := &m.Fields[i]
		c := x.at(i)
		if f.TableOID != 0 && f.TableAttributeNumber > 0 && cat != nil {
			col, isPHI := cat.PHIColumn(config.ColumnRef{RelOID: f.TableOID, Num: int16(f.TableAttributeNumber)})
			if isPHI && (c == nil || c.col.Key != col.Key) || !isPHI && c != nil && cat.IsPHIRelation(f.TableOID) {
				return s.fail(pgerr.Newf(pgerr.Internal, "phiproxy cannot match result column %s to its planned PHI transform", columnName([]string{string(f.Name)}, 0)).
					WithHint("the statement's result shape differs from what phiproxy planned; the catalog may have changed, retry"), out)
			}
		}
		if c != nil && f.DataTypeOID != byteaOID {
			// The plan reads ciphertext here; the server says the column
			// is not bytea (changed since the snapshot): never decrypt nor
			// forward what it holds.
			return s.fail(pgerr.Newf(pgerr.Internal, "phiproxy planned result column %s as PHI column %s, but the server reports it is not bytea", columnName([]string{string(f.Name)}, 0), c.col.Ident).
				WithHint("the catalog changed under phiproxy's snapshot; retry once it has refreshed"), out)
		}
		if c != nil {
			f.DataTypeOID = c.oid
			f.DataTypeSize = c.size
			f.TypeModifier = c.typmod
			changed = true
		}
	}
	if !changed {
		return out.ForwardUnchanged()
	}
	return out.Forward(m)
}

package phi

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// The proxy's model of the session (search_path, current role, temporary
// relations, prepared statements) must be the server's, or a statement on a
// PHI table could be planned as one on a plain table. The rules:
//
//   - The mirror (mirror.go) and the confirmed prepared statements change
//     only on the server's answers.
//   - The statements of one Query string, and of one extended-protocol
//     batch up to Sync, run in order and stop at the first error: each is
//     planned with the state the ones before it leave
//     (rewrite.Sequence), assuming they succeed — if one fails, the ones
//     after it do not run.
//   - A statement that names PHI and follows a cycle (Query, or batch up
//     to Sync) that changed that state waits for the cycle's
//     ReadyForQuery, then is planned with the confirmed state.
//   - Where the text cannot tell the new state (rewrite.Statement
//     StateUnknown), the proxy reads it back from the server with a probe
//     query of its own before planning the next statement that names PHI;
//     where it cannot ask (inside an open batch, or in a failed
//     transaction) it refuses that statement.
//   - DDL that may change what a PHI name means is seen by the catalog
//     snapshot only once committed: inside its transaction statements that
//     name PHI are refused; after the commit they wait for the refreshed
//     snapshot.
//
// And the planner pins every such name to the relation it resolved
// (rewrite), so a drift left over becomes a server error, never plaintext
// in a PHI column.

// signal wakes a client goroutine waiting in wait (server goroutine).
func (s *session) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// errSessionEnded stops a wait when the session ends.
var errSessionEnded = pgerr.Fatal(pgerr.ConnectionFailure, "the session ended while phiproxy waited for the server")

// wait blocks until the server goroutine signals or the session ends
// (its context is cancelled as soon as it starts to end).
func (s *session) wait() error {
	select {
	case <-s.wake:
		return nil
	case <-s.ended:
		return errSessionEnded
	}
}

// planSession returns the Session to plan sql with (client goroutine).
// It may flush what was forwarded and wait for the server's answers, or
// read the state back with a probe; its error is a refusal.
func (s *session) planSession(snap **snapshot, sql string, out *proxy.Out) (rewrite.Session, error) {
	if s.batch != nil {
		sess, why := s.batch.Session()
		if why != "" && ((*snap).planner.MentionsPHI(sql) || rewrite.NamesAny(sql, s.batch.Created())) {
			return sess, unknownState(why)
		}
		return sess, nil
	}
	s.mu.Lock()
	settled := s.pending == 0 && !s.m.unknown && !s.m.refresh && !s.m.ddl
	refresh := s.m.refresh || s.pendingDDL > 0
	created := s.m.ddlNames
	sess := s.m.session()
	s.mu.Unlock()
	if settled {
		return sess, nil
	}
	// A relation DDL just created from PHI (CREATE VIEW v AS SELECT ssn
	// FROM patients) is named by nothing the old snapshot knows: after
	// such DDL every statement waits for the refreshed snapshot, and
	// inside its transaction one that names the new relation is refused.
	mentions := (*snap).planner.MentionsPHI(sql) || rewrite.NamesAny(sql, created)
	if !mentions && !refresh {
		return sess, nil
	}
	sess, err := s.settle(out, mentions)
	*snap = s.p.cur.Load() // a catalog refresh may have swapped it
	return sess, err
}

// settle waits until the mirrored state is the server's and returns it.
// mentions says the statement names PHI (or a relation DDL in this
// transaction created); without it only a pending catalog refresh is
// waited for.
func (s *session) settle(out *proxy.Out, mentions bool) (rewrite.Session, error) {
	flushed := false
	for {
		s.mu.Lock()
		pending, unknown, refresh, ddl := s.pending, s.m.unknown, s.m.refresh, s.m.ddl
		pendingDDL := s.pendingDDL
		failed := s.m.explicit && s.m.failed
		sess := s.m.session()
		s.mu.Unlock()
		if !mentions {
			pending, unknown, ddl = pendingDDL, false, false
		}
		switch {
		case pending > 0:
			if !flushed {
				if err := out.FlushServer(); err != nil {
					return sess, err
				}
				flushed = true
			}
			if err := s.wait(); err != nil {
				return sess, err
			}
		case ddl:
			return sess, pgerr.New(pgerr.FeatureNotSupported, "phiproxy cannot plan a statement that names a PHI relation after DDL earlier in this transaction that may change what the name means").
				WithHint("commit the DDL in a transaction of its own first: phiproxy then plans with the catalog as the DDL left it")
		case refresh:
			if err := s.p.awaitCatalog(); err != nil {
				return sess, err
			}
			s.mu.Lock()
			s.m.refresh = false
			s.mu.Unlock()
		case unknown && failed:
			return sess, pgerr.New(pgerr.InFailedSQLTransaction, "current transaction is aborted, commands ignored until end of transaction block")
		case unknown && s.extOpen:
			return sess, unknownState("a statement in this pipeline")
		case unknown:
			if err := s.runProbe(out); err != nil {
				return sess, err
			}
		default:
			return sess, nil
		}
	}
}

func unknownState(after string) *pgerr.Error {
	return pgerr.Newf(pgerr.FeatureNotSupported, "phiproxy cannot tell which relations a name means after %s changed the session state in a way it cannot follow", after).
		WithHint("send the statement after the server has answered the one before it (outside a pipeline), so that phiproxy can read the session state back")
}

// probeQuery reads back what decides name resolution: search_path, the
// current and session users, and the session's temporary relations (one
// row each, or one row with NULL); and the end user (NULL when
// phiproxy.end_user was never set).
const probeQuery = `SELECT pg_catalog.current_setting('search_path'), current_user::text, session_user::text, c.relname::text, pg_catalog.current_setting('phiproxy.end_user', true), pg_catalog.current_setting('phiproxy.break_glass', true) FROM (VALUES (1)) v LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')`

// probeResult is what a probe read.
type probeResult struct {
	n           names
	sessionUser string
	err         bool
}

// runProbe sends the probe and waits for its ReadyForQuery (client
// goroutine; no extended batch may be open).
func (s *session) runProbe(out *proxy.Out) error {
	s.mu.Lock()
	s.probe = nil
	s.fifo.push(&entry{kind: entryProbe})
	s.mu.Unlock()
	if err := out.ToServer(&pgproto3.Query{String: probeQuery}); err != nil {
		return err
	}
	if err := out.FlushServer(); err != nil {
		return err
	}
	for {
		s.mu.Lock()
		r := s.probe
		s.mu.Unlock()
		if r != nil {
			if r.err {
				return pgerr.New(pgerr.Internal, "phiproxy could not read the session state back from the server").
					WithHint("retry the statement; if it persists, reconnect")
			}
			return nil
		}
		if err := s.wait(); err != nil {
			return err
		}
	}
}

// probeMessage handles the server's answer to a probe (server goroutine).
func (s *session) probeMessage(msg pgproto3.BackendMessage) {
	switch m := msg.(type) {
	case *pgproto3.DataRow:
		if len(m.Values) != 6 {
			s.probeAcc.err = true
			return
		}
		s.probeAcc.n.path = string(m.Values[0])
		s.probeAcc.n.user = string(m.Values[1])
		s.probeAcc.sessionUser = string(m.Values[2])
		s.probeAcc.n.endUser = string(m.Values[4])
		s.probeAcc.n.breakGlass = string(m.Values[5])
		if m.Values[3] != nil {
			s.probeAcc.n.temp = rewrite.TempWith(s.probeAcc.n.temp, string(m.Values[3]))
		}
	case *pgproto3.ErrorResponse:
		s.probeAcc.err = true
	}
}

// probeReady completes a probe at its ReadyForQuery (server goroutine,
// s.mu held).
func (s *session) probeReady(status byte) {
	r := s.probeAcc
	s.probeAcc = probeResult{}
	if !r.err {
		s.m.probed(r.n, r.sessionUser, status != 'I')
	}
	s.probe = &r
}

// lookupStmt returns the prepared statement name will mean when the
// server reaches the message being sent (client goroutine). A change in
// flight in an earlier cycle may yet fail: the lookup then waits for that
// cycle's answer and takes the confirmed statement.
func (s *session) lookupStmt(name string, out *proxy.Out) (*prepared, bool, error) {
	if c, ok := s.opCycle[name]; ok && c != s.cycle {
		flushed := false
		for s.doneCycles.Load() <= c {
			if !flushed {
				if err := out.FlushServer(); err != nil {
					return nil, false, err
				}
				flushed = true
			}
			if err := s.wait(); err != nil {
				return nil, false, err
			}
		}
		s.reconcile(name)
	}
	ps, ok := s.stmts[name]
	return ps, ok, nil
}

// reconcile takes the confirmed statement for name (client goroutine).
func (s *session) reconcile(name string) {
	s.mu.Lock()
	ps, ok := s.confirmed[name]
	s.mu.Unlock()
	if ok {
		s.stmts[name] = ps
	} else {
		delete(s.stmts, name)
	}
	delete(s.opCycle, name)
}

// settleStmts reconciles the names whose changes the server has answered,
// so that opCycle does not grow (client goroutine).
func (s *session) settleStmts() {
	if len(s.opCycle) == 0 {
		return
	}
	done := s.doneCycles.Load()
	for name, c := range s.opCycle {
		if c < done {
			s.reconcile(name)
		}
	}
}

// setStmt records a change of the statement namespace being sent (client
// goroutine): ps nil removes name.
func (s *session) setStmt(name string, ps *prepared) {
	if ps == nil {
		delete(s.stmts, name)
	} else {
		s.stmts[name] = ps
	}
	s.opCycle[name] = s.cycle
}

// clearStmts records DEALLOCATE ALL / DISCARD ALL being sent.
func (s *session) clearStmts() {
	for name := range s.stmts {
		s.opCycle[name] = s.cycle
	}
	clear(s.stmts)
}

// stmtEffects applies, to the namespace being sent, what a SQL-level
// PREPARE, DEALLOCATE or DISCARD ALL will do if it succeeds.
func (s *session) stmtEffects(st *rewrite.Statement) {
	if st.Effects&rewrite.EffectPrepare != 0 && st.Prepare != "" {
		s.setStmt(st.Prepare, &prepared{name: st.Prepare, st: st})
	}
	if st.Effects&rewrite.EffectDeallocate != 0 {
		if st.Deallocate == "" {
			s.clearStmts()
			if st.Tag == "DISCARD" {
				clear(s.portals)
			}
		} else {
			s.setStmt(st.Deallocate, nil)
		}
	}
}

// batchEffects follows what an Execute being sent will change (client
// goroutine): the statement namespace, and the session state the rest of
// the batch is planned with.
func (s *session) batchEffects(st *rewrite.Statement, out *proxy.Out) error {
	s.stmtEffects(st)
	if st.NameDDL {
		s.batchDDL = true
	}
	if !effectful(st) {
		return nil
	}
	if s.batch == nil {
		flushed := false
		for {
			s.mu.Lock()
			pending := s.pending
			sess := s.m.session()
			unsettled := s.m.unknown || s.m.ddl || s.m.refresh
			s.mu.Unlock()
			if pending > 0 {
				if !flushed {
					if err := out.FlushServer(); err != nil {
						return err
					}
					flushed = true
				}
				if err := s.wait(); err != nil {
					return err
				}
				continue
			}
			s.batch = rewrite.NewSequence(sess)
			if unsettled {
				s.batch.MarkUnknown("an earlier statement")
			}
			break
		}
	}
	s.batch.After(st)
	return nil
}

// confirmStmt applies a SQL-level statement's effect on the namespace once
// the server completed it (server goroutine, s.mu held). Prepared
// statements are not transactional: a PREPARE stays even if its
// transaction rolls back.
func (s *session) confirmStmt(st *rewrite.Statement) {
	if st.Effects&rewrite.EffectPrepare != 0 && st.Prepare != "" {
		s.confirmed[st.Prepare] = &prepared{name: st.Prepare, st: st}
	}
	if st.Effects&rewrite.EffectDeallocate != 0 {
		if st.Deallocate == "" {
			clear(s.confirmed)
		} else {
			delete(s.confirmed, st.Deallocate)
		}
	}
}

// execute resolves a SQL-level EXECUTE (also under EXPLAIN or CREATE
// TABLE AS) against the prepared statements. A name the proxy does not
// know is refused as PostgreSQL would refuse it: never forwarded with
// arguments that might be plaintext PHI.
func (s *session) execute(st *rewrite.Statement, out *proxy.Out) (*rewrite.Statement, error) {
	if st.Execute == nil {
		return st, nil
	}
	ps, ok, err := s.lookupStmt(st.Execute.Name, out)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, pgerr.Newf(pgerr.InvalidSQLStatementName, "prepared statement %q does not exist", st.Execute.Name)
	}
	if ps.st == nil {
		return st, nil
	}
	return rewrite.BindExecute(st, ps.st)
}

// effectful reports whether st changes the state the planner depends on
// in a way the next cycle must wait for.
func effectful(st *rewrite.Statement) bool {
	return st.Effects&(rewrite.EffectSearchPath|rewrite.EffectRole|rewrite.EffectTransaction) != 0 ||
		st.StateUnknown || st.NameDDL || st.TempCreate != "" || len(st.TempDrop) > 0 || st.TempClear
}

// catalog refresh -------------------------------------------------------

// awaitCatalog waits until a catalog refresh that started after the last
// DDL request has finished (bounded).
func (p *Proxy) awaitCatalog() error {
	want := p.refreshWant.Load()
	ctx, cancel := context.WithTimeout(p.bg, 30*time.Second)
	defer cancel()
	for p.refreshDone.Load() < want {
		p.catalogChanged()
		ch := p.refreshedCh()
		if p.refreshDone.Load() >= want {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return pgerr.New(pgerr.Internal, "phiproxy could not refresh its catalog snapshot after DDL").
				WithHint("retry the statement; the server log of phiproxy says why the refresh failed")
		}
	}
	return nil
}

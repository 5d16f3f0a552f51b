package phi

import (
	"bytes"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Observer sees the lifecycle of every execution of a statement that
// touches PHI, and of every statement phiproxy refuses: where policy
// decisions and audit events hang. Start and End run on the session's
// server→client goroutine (End also from SessionEnd, when no other
// goroutine of the session runs), so the calls for one session never
// overlap; calls for different sessions do. What they see is the plan
// (rewrite.Statement: Tag, Action, Relations, Columns, Normalized,
// Fingerprint), the session and its identity, and the outcome: never a
// value, a parameter or a row.
//
// An execution is one simple-protocol statement, or one Execute of a
// portal (a row-limited Execute that ends in PortalSuspended is one
// execution; the next Execute of the portal is another). Without an
// Observer (WithObserver) none of this runs and nothing is allocated.
type Observer interface {
	// Start runs once before the first row of an execution is released
	// to the client: before its first DataRow, or before the
	// CopyOutResponse of a COPY TO. An execution that releases no row
	// (a write, a COPY FROM, an error before any row, a refusal) gets End
	// only. A non-nil error fails the execution instead: the client gets
	// it as an ERROR (a *pgerr.Error keeps its SQLSTATE, anything else
	// becomes XX000) and no row of it; End follows with that SQLSTATE.
	// Start may block (a durable audit write): Session.Context() is
	// cancelled when the session ends.
	Start(ex *Execution) error
	// End runs exactly once per execution, when it completed
	// (CommandComplete, EmptyQueryResponse, PortalSuspended), failed (the
	// server's ErrorResponse, or phiproxy's own error in the middle of
	// it), was refused, or the session ended first.
	End(ex *Execution)
}

// SessionObserver is an Observer that also sees each session end, after
// the End of its last execution: err is why the proxy ended the session
// (a *pgerr.Error: FATAL 57P05 or 25P03 for automatic logoff, 57P01 at
// shutdown, ...), nil when the client or the server ended it. It runs once
// per session, when no other call for the session runs.
type SessionObserver interface {
	Observer
	SessionEnd(session *proxy.SessionInfo, err error)
}

// Admitter is an Observer that also admits each statement that touches
// PHI before it is sent to the server (client goroutine; a simple Query's
// statements one by one, an extended-protocol statement at each Bind): a
// non-nil error refuses it as phiproxy's own refusal (a *pgerr.Error keeps
// its SQLSTATE), and End follows with Refused. The audit trail refuses
// here while it cannot write; policy and lockdown decide here.
type Admitter interface {
	Admit(session *proxy.SessionInfo, st *rewrite.Statement) error
}

// Announcer is an Observer that hears of an execution that may release
// rows (a read, a COPY TO, a RETURNING) before its statement is sent to
// the server (client goroutine), so that work Start must finish — a
// durable audit write — runs while the server executes it. The same
// Execution then gets Start and End; one whose statement never ran gets
// End with Skipped, one announced under an identity a statement pipelined
// before it changed gets End with Withdrawn (and a new Execution stands
// for it). Announce is an optimisation: an execution not announced is
// observed as before.
type Announcer interface {
	Announce(ex *Execution)
}

// Timer is an Observer that also takes the PHI path's latencies:
// planning a statement text (a plan-cache hit included) and encrypting or
// decrypting the PHI values of one message (a Query's literals, a Bind's
// parameters, a DataRow, a COPY chunk). Both run on the session's
// goroutines; keep them cheap.
type Timer interface {
	ObservePlan(d time.Duration)
	ObserveCrypto(op CryptoOp, d time.Duration)
}

// CryptoOp is what a crypto latency measures.
type CryptoOp uint8

// CryptoOps.
const (
	CryptoEncrypt CryptoOp = iota
	CryptoDecrypt
)

// plan plans sql, timed for the Timer.
func (s *session) plan(snap *snapshot, sql string, sess rewrite.Session) (*rewrite.Plan, error) {
	if s.tm == nil {
		return snap.planner.Plan(sql, sess)
	}
	t0 := time.Now()
	p, err := snap.planner.Plan(sql, sess)
	s.tm.ObservePlan(time.Since(t0))
	return p, err
}

// announceable says st's execution is announced: it touches PHI and may
// release rows.
func announceable(st *rewrite.Statement) bool {
	return st != nil && st.TouchesPHI && (st.Action == rewrite.ActionRead || st.Action == rewrite.ActionCopyOut || len(st.Results) > 0)
}

// identitySettled says no cycle that may change the session's identity
// is in flight, so the identity published now is the one a statement
// sent now runs under (client goroutine).
func (s *session) identitySettled() bool {
	if s.batch != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending == 0
}

// announceQuery announces the executions of q's statements that may
// release rows, up to the first statement that changes session state
// (client goroutine, before the Query is queued).
func (s *session) announceQuery(q *queryRun) {
	if s.ann == nil || !s.identitySettled() {
		return
	}
	for i, st := range q.stmts {
		if st.Effects&rewrite.EffectEndUser != 0 || effectful(st) {
			return
		}
		if !announceable(st) {
			continue
		}
		if q.announced == nil {
			q.announced = make([]*Execution, len(q.stmts))
		}
		ex := s.newExecution(st, q.tags, false)
		if i < len(q.decisions) {
			ex.setDecision(q.decisions[i])
		}
		s.ann.Announce(ex)
		q.announced[i] = ex
	}
}

// announceExecute announces an Execute's execution (client goroutine,
// before it is queued).
func (s *session) announceExecute(e *entry) {
	ps := e.portal.ps
	if s.ann == nil || ps == nil || !announceable(ps.st) || !s.identitySettled() {
		return
	}
	e.announced = s.newExecution(ps.st, ps.tags, true)
	e.announced.setDecision(e.portal.dec)
	s.ann.Announce(e.announced)
}

// setDecision records the policy's decision d (nil: none) in ex.
func (ex *Execution) setDecision(d *decision) {
	if d != nil {
		ex.Decision, ex.Reason, ex.BreakGlass = d.Outcome, d.Reason, d.BreakGlass
	}
}

// decisionOf is the policy's decision on e's statement.
func decisionOf(e *entry) *decision {
	switch e.kind {
	case entryQuery:
		if q := e.q; q.idx < len(q.decisions) {
			return q.decisions[q.idx]
		}
	case entryExecute:
		return e.portal.dec
	}
	return nil
}

// takeAnnounced returns the announced execution of e's statement, if
// any, removing it from e (server goroutine).
func takeAnnounced(e *entry) *Execution {
	switch e.kind {
	case entryQuery:
		if q := e.q; q.idx < len(q.announced) {
			ex := q.announced[q.idx]
			q.announced[q.idx] = nil
			return ex
		}
	case entryExecute:
		ex := e.announced
		e.announced = nil
		return ex
	}
	return nil
}

// skipAnnounced ends, as Skipped, the announced executions of e that
// will not run: a Query's statements from index from on, an Execute's
// own (server goroutine, or the client goroutine for an entry never
// queued).
func (s *session) skipAnnounced(e *entry, from int) {
	if s.obs == nil {
		return
	}
	var list []*Execution
	switch e.kind {
	case entryQuery:
		if from < len(e.q.announced) {
			list = e.q.announced[from:]
		}
	case entryExecute:
		list = []*Execution{e.announced}
		e.announced = nil
	}
	for i, ex := range list {
		if ex != nil {
			ex.Skipped = true
			s.obs.End(ex)
			list[i] = nil
		}
	}
}

// admit asks the Admitter, if any, about a PHI statement.
func (s *session) admit(st *rewrite.Statement) error {
	if st == nil || !st.TouchesPHI {
		return nil
	}
	if decrypts(st) && s.p.Locked() {
		return lockdownError()
	}
	if s.adm == nil {
		return nil
	}
	return s.adm.Admit(s.info, st)
}

// WithObserver installs the statement lifecycle Observer (default none).
func WithObserver(o Observer) Option { return func(p *Proxy) { p.obs = o } }

// Execution is one execution of a statement, as an Observer sees it. The
// Observer must not modify it, and must copy what it keeps after End.
type Execution struct {
	// Session is the session's description: client address, user, roles,
	// instance, its context.
	Session *proxy.SessionInfo
	// Statement is the plan. It is nil only for a refusal of text that
	// could not be planned (it does not parse, or a session setting makes
	// it unreadable): then only the outcome is known.
	Statement *rewrite.Statement
	// Identity is who ran it: the current role when it ran (after any SET
	// ROLE the server confirmed before it) and the end user — the
	// statement's own sqlcommenter end_user tag, else SET
	// phiproxy.end_user.
	Identity proxy.Identity
	// Tags are the sqlcommenter tags of the statement's text, URL-decoded
	// (nil when it has none). They are the application's text and may
	// hold anything: keep only allow-listed keys, bounded.
	Tags []rewrite.Tag
	// Extended is true for an Execute of the extended protocol.
	Extended bool
	// Epoch is the decision epoch (Proxy.DecisionEpoch) its result
	// transform was built under; for a statement without one, the epoch
	// when it started.
	Epoch uint64

	// The outcome, set before End.
	//
	// Rows is the count of the CommandComplete tag (INSERT 0 n, SELECT n,
	// COPY n, ...), else the rows released to the client (a suspended
	// portal, a failure, the session's end).
	Rows int64
	// SQLSTATE is the error the client got for it, "" on success.
	SQLSTATE string
	// Refused: phiproxy refused it; the server never ran it.
	Refused bool
	// Suspended: a row-limited Execute ended in PortalSuspended; the
	// portal may be executed again.
	Suspended bool
	// Ended: the session ended before the statement completed; its outcome
	// on the server is unknown.
	Ended bool

	started  bool
	released int64
	// Decision, Reason and BreakGlass are the policy's decision on it
	// (allowed or masked, the rules that decided, plaintext through
	// break-glass); "" when no decision was made (a refusal).
	Decision, Reason string
	BreakGlass       bool

	// Why is phiproxy's refusal message for a Refused execution (it names
	// relations, columns and rules, never a value).
	Why string

	// Skipped: announced, but never run (an earlier statement of its
	// Query or pipeline failed). Withdrawn: announced under an identity
	// that was not the one it ran under; another execution stands for it.
	Skipped, Withdrawn bool

	// audit is the Auditor's record of it, once Announced or Started;
	// auditErr why Announce could not record it.
	audit    *audit.Record
	auditErr error
}

// stmtOf is the statement the answers to e are for, with its end user
// tag: a Query's current statement, an Execute's portal's.
func stmtOf(e *entry) (*rewrite.Statement, textTags, bool) {
	switch e.kind {
	case entryQuery:
		if q := e.q; q.idx < len(q.stmts) {
			return q.stmts[q.idx], q.tags, false
		}
	case entryExecute:
		if ps := e.portal.ps; ps != nil {
			return ps.st, ps.tags, true
		}
	}
	return nil, textTags{}, false
}

// newExecution starts observing st (server goroutine).
func (s *session) newExecution(st *rewrite.Statement, tags textTags, extended bool) *Execution {
	id := s.info.Identity()
	if tags.endUser != "" {
		id.EndUser = tags.endUser
	}
	return &Execution{Session: s.info, Statement: st, Identity: id, Tags: tags.all, Extended: extended, Epoch: s.p.epoch.Load()}
}

// execution returns the execution the front entry's answers belong to,
// starting it; nil when it is not observed (server goroutine, Observer
// set).
func (s *session) execution(e *entry) *Execution {
	if s.ex != nil {
		return s.ex
	}
	if e == nil {
		return nil
	}
	st, tag, ext := stmtOf(e)
	if st == nil || !st.TouchesPHI {
		return nil
	}
	ex := s.newExecution(st, tag, ext)
	ex.setDecision(decisionOf(e))
	if ann := takeAnnounced(e); ann != nil {
		if ann.Identity == ex.Identity {
			ex = ann
		} else {
			ann.Withdrawn = true
			s.obs.End(ann)
		}
	}
	s.ex = ex
	return s.ex
}

// observeStart runs Observer.Start before the first row of e's statement
// is released; x is the result transform the rows are decrypted with
// (server goroutine).
func (s *session) observeStart(e *entry, x *rowX) *pgerr.Error {
	ex := s.execution(e)
	if ex == nil || ex.started {
		return nil
	}
	ex.started = true
	if x != nil {
		ex.Epoch = x.epoch
	}
	if err := s.obs.Start(ex); err != nil {
		return asRefusal(err)
	}
	return nil
}

// observedRow is dataRow with an Observer: Start before the first row of
// an execution, and the rows released counted.
func (s *session) observedRow(e *entry, m *pgproto3.DataRow, out *proxy.Out) error {
	var x *rowX
	switch e.kind {
	case entryQuery:
		x = s.queryRowX(e.q)
	case entryExecute:
		var err *pgerr.Error
		if x, err = s.portalX(e); err != nil {
			return s.fail(err, out)
		}
	}
	if err := s.observeStart(e, x); err != nil {
		return s.fail(err, out)
	}
	err := s.dataRow(e, m, out)
	if s.ex != nil && err == nil {
		s.ex.released++
	}
	return err
}

// observeFailed ends the execution in progress with phiproxy's own error
// (fail); the server's answers to it that follow are dropped, and end
// nothing more (server goroutine).
func (s *session) observeFailed(err *pgerr.Error) {
	if s.exDone {
		return
	}
	// The entry the failing message answers; none when the message was
	// not expected (never the next entry: its statement has not begun).
	var e *entry
	if s.haveHead {
		e = &s.head
	}
	if s.execution(e) == nil {
		return
	}
	s.observeEnd(e, Execution{Rows: -1, SQLSTATE: err.Code.String()})
	s.exDone = true
}

// observeEnd ends the execution in progress for e, if it is observed
// (server goroutine).
func (s *session) observeEnd(e *entry, ex Execution) {
	if s.obs == nil {
		return
	}
	if s.exDone {
		// Ended by a failure here; this is the server's answer to it.
		s.ex, s.exDone = nil, false
		return
	}
	cur := s.execution(e)
	if cur == nil {
		return
	}
	s.ex = nil
	cur.Rows, cur.SQLSTATE, cur.Suspended, cur.Ended = ex.Rows, ex.SQLSTATE, ex.Suspended, ex.Ended
	if ex.Rows < 0 {
		cur.Rows = cur.released
	}
	s.obs.End(cur)
}

// observeRefusal reports a statement phiproxy refused, when the
// refusal's error reaches the client (server goroutine).
func (s *session) observeRefusal(st *rewrite.Statement, tags textTags, extended bool, refusal *pgerr.Error) {
	code := refusal.Code.String()
	if s.obs == nil {
		return
	}
	if s.ex != nil {
		s.observeEnd(nil, Execution{Rows: -1, SQLSTATE: code})
	}
	ex := s.newExecution(st, tags, extended)
	ex.Refused, ex.SQLSTATE, ex.Why = true, code, refusal.Message
	s.obs.End(ex)
}

// observeBindError reports a PHI statement whose Bind the server
// refused (a parameter its type rejects, an error while planning it): an
// execution that failed before it began (server goroutine).
func (s *session) observeBindError(e *entry, code string) {
	if s.obs == nil {
		return
	}
	ps := e.portal.ps
	if ps == nil || ps.st == nil || !ps.st.TouchesPHI {
		return
	}
	ex := s.newExecution(ps.st, ps.tags, true)
	ex.SQLSTATE = code
	s.obs.End(ex)
}

// observeEntryRefusal reports the statement a Parse or Bind poison
// stands in for.
func (s *session) observeEntryRefusal(e *entry) {
	if s.obs == nil {
		return
	}
	var r refusedStmt
	if e.refused != nil {
		r = *e.refused
	}
	s.observeRefusal(r.st, r.tags, true, e.poison)
}

// clientCode is the SQLSTATE the client gets for the server's error m:
// fwd's when phiproxy replaced or redacted it.
func clientCode(m, fwd *pgproto3.ErrorResponse) string {
	if fwd != nil {
		return fwd.Code
	}
	return m.Code
}

// publishIdentity publishes the mirrored identity in SessionInfo when it
// changed (server goroutine, the mirror's only writer; s.mu held, so that
// it is published before a waiting client goroutine wakes).
func (s *session) publishIdentity() {
	if id := s.m.identity(); id != s.published {
		s.published = id
		s.info.SetIdentity(id)
	}
	// Break-glass starts when the server confirms the SET (its TTL runs
	// from then) and ends with RESET, a rollback of the SET, or the
	// session.
	if bg := s.m.eff.breakGlass; bg != s.bgReason {
		s.bgReason = bg
		since := int64(0)
		if bg != "" {
			since = s.p.clock().UnixNano()
		}
		s.bgSince.Store(since)
	}
}

// breakGlassSince is when the session's break-glass began (zero: none).
func (s *session) breakGlassSince() time.Time {
	if ns := s.bgSince.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// tagRows is the row count of a CommandComplete tag (its last word when
// it is a number), 0 for a tag without one.
func tagRows(tag []byte) int64 {
	i := bytes.LastIndexByte(tag, ' ')
	if i < 0 {
		return 0
	}
	n, err := strconv.ParseInt(string(tag[i+1:]), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// SessionEnd implements proxy.Interceptor: it runs once both relay
// goroutines have returned. The statements still waiting for an answer
// end, for the Observer, with their outcome unknown; then a
// SessionObserver sees the session's end.
func (s *session) SessionEnd(err error) {
	s.p.sessions.Delete(s)
	if s.obs == nil {
		return
	}
	s.mu.Lock()
	var pending []entry
	for i := 0; i < s.fifo.n; i++ {
		pending = append(pending, s.fifo.ring[(s.fifo.head+i)%len(s.fifo.ring)])
	}
	s.mu.Unlock()
	for i := range pending {
		e := &pending[i]
		switch e.kind {
		case entryQuery:
			q := e.q
			if q.failed {
				continue // its statements after the error never run
			}
			for q.idx < len(q.stmts) {
				s.observeEnd(e, Execution{Rows: -1, Ended: true})
				q.idx++
			}
			if q.poison != nil && q.idx == q.poisonAt {
				s.observeRefusal(q.refused, q.tags, false, q.poison)
			}
		case entryExecute:
			s.observeEnd(e, Execution{Rows: -1, Ended: true})
		case entryParse, entryBind:
			if e.poison != nil {
				s.observeEntryRefusal(e)
			}
		}
	}
	// An execution whose entry has left the FIFO (skipped after an error).
	s.observeEnd(nil, Execution{Rows: -1, Ended: true})
	if so, ok := s.obs.(SessionObserver); ok {
		so.SessionEnd(s.info, err)
	}
}

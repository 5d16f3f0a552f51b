package proxy

import (
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Automatic logoff (limits.idle_session_timeout and
// limits.idle_in_transaction_timeout, HIPAA §164.312(a)(2)(iii)) ends a
// session the client leaves idle, as PostgreSQL's settings of the same
// names do and with the same FATAL errors. A session is idle from the
// ReadyForQuery that answers the last request in flight (its status picks
// the timeout: 'I' idle_session_timeout, 'T' or 'E' the in-transaction
// one) until the client sends its next message. A statement in flight, a
// COPY FROM STDIN waiting for data or an extended-protocol batch not yet
// synced is not idle: PostgreSQL arms its timers only after sending
// ReadyForQuery, and so does the proxy.
//
// One timer per session, armed by the server goroutine at such a
// ReadyForQuery (under stMu, with the request queue) and disarmed by the
// client goroutine when the next client message arrives: the relay's
// per-message cost is one atomic load of armed.

// idleLogoff is a session's automatic-logoff timer. t and deadline are
// guarded by the session's stMu.
type idleLogoff struct {
	armed    atomic.Bool
	t        *time.Timer
	deadline time.Time
}

// armIdleLocked starts the idle timer if the session is now idle and a
// timeout applies to its state; the caller holds stMu and has just applied
// a ReadyForQuery.
func (s *session) armIdleLocked() {
	if len(s.inflight) > 0 {
		return // pipelined requests are still to be answered
	}
	lim := s.srv.Config().Limits // a reload applies from the next idle period
	var d time.Duration
	switch s.cur {
	case StateIdle:
		d = lim.IdleSessionTimeout
	case StateInTx, StateFailedTx:
		d = lim.IdleInTransactionTimeout
	}
	if d <= 0 {
		s.disarmIdleLocked()
		return
	}
	s.idle.deadline = time.Now().Add(d)
	if s.idle.t == nil {
		s.idle.t = time.AfterFunc(d, s.idleExpired)
	} else {
		s.idle.t.Reset(d)
	}
	s.idle.armed.Store(true)
}

// clientActive is called by the client goroutine for every message it
// reads: the session is no longer idle.
func (s *session) clientActive() {
	if s.idle.armed.Load() {
		s.stMu.Lock()
		s.disarmIdleLocked()
		s.stMu.Unlock()
	}
}

func (s *session) disarmIdleLocked() {
	if s.idle.armed.Load() {
		s.idle.armed.Store(false)
		s.idle.t.Stop()
	}
}

// stopIdle releases the timer when the session is over.
func (s *session) stopIdle() {
	s.stMu.Lock()
	s.disarmIdleLocked()
	s.stMu.Unlock()
}

// idleExpired runs on the timer's goroutine: it ends the session if it is
// still idle (a client message or a re-arm may have raced with the timer).
func (s *session) idleExpired() {
	defer s.recoverPanic() // the timer's goroutine is the session's too
	s.stMu.Lock()
	ok := s.idle.armed.Load() && !time.Now().Before(s.idle.deadline) && len(s.inflight) == 0 && !s.closing.Load()
	st := s.cur
	if ok {
		s.idle.armed.Store(false)
	}
	s.stMu.Unlock()
	if !ok {
		return
	}
	var e *pgerr.Error
	switch st {
	case StateIdle:
		e = pgerr.Fatal(pgerr.IdleSessionTimeout, "terminating connection due to idle-session timeout")
	case StateInTx, StateFailedTx:
		e = pgerr.Fatal(pgerr.IdleInTransactionTimeout, "terminating connection due to idle-in-transaction timeout")
	default:
		return
	}
	s.log.Info("automatic logoff", "sqlstate", e.Code.String(), "state", st.String())
	// Terminate lets the upstream backend end (rolling back an open
	// transaction) at once and without logging an unexpected EOF; the
	// server leg is at a message boundary since the client is idle. end
	// closes both legs whatever the upstream does; closing, set first,
	// keeps the relay goroutines from ending the session on the
	// upstream's EOF before end sends e.
	s.closing.Store(true)
	if up := s.upstream(); up != nil {
		_ = up.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = up.sendNow(&pgproto3.Terminate{})
	}
	s.end(e)
}

func (s *session) upstream() *leg {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return s.server
}

package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelRegistry maps the BackendKeyData phiproxy gave each client to the
// upstream backend of that session. The client sees the upstream backend's
// real process ID (what pg_backend_pid(), NotificationResponse and
// pg_stat_activity show) with a secret key of the proxy's own: the
// upstream's secret never leaves the proxy. A CancelRequest is honoured
// only with a (process ID, secret) pair phiproxy issued, and then forwarded
// with the upstream's key over a fresh upstream connection.
//
// Entries are kept per process ID as a list, not one per ID: a backend's
// process ID is reused by PostgreSQL once that backend has exited, so a new
// session may register the ID of a session that is still winding down, and
// after a configuration reload two live sessions may run on different
// upstream servers with the same ID. The secret tells them apart; each
// session removes exactly its own entry.
type cancelRegistry struct {
	mu sync.Mutex
	m  map[uint32][]*cancelEntry
}

type cancelEntry struct {
	pid      uint32  // the upstream backend's process ID, given to the client as is
	secret   [4]byte // the proxy's secret given to the client
	upSecret []byte  // the upstream's secret, never given to the client
	dialer   *upstreamDialer
}

// newCancelEntry makes the entry for an upstream backend key, with a fresh
// random secret of the proxy's.
func newCancelEntry(upPID uint32, upSecret []byte, dialer *upstreamDialer) *cancelEntry {
	e := &cancelEntry{pid: upPID, upSecret: upSecret, dialer: dialer}
	if _, err := rand.Read(e.secret[:]); err != nil {
		panic("BUG: crypto/rand failed: " + err.Error())
	}
	return e
}

// issueCancelKey registers the upstream's key from res under a secret of
// the proxy's and returns the BackendKeyData for the client: the upstream
// backend's process ID and that secret. An upstream that sent no key (not
// PostgreSQL itself) leaves the client without one too.
func (s *session) issueCancelKey(res *loginResult, rt *runtimeConfig) []pgproto3.Message {
	if res.pid == 0 && len(res.secret) == 0 {
		return nil
	}
	s.cancelKey = newCancelEntry(res.pid, res.secret, rt.upstream)
	s.srv.cancels.register(s.cancelKey)
	s.log = s.log.With("backend_pid", res.pid) // matches pg_stat_activity.pid
	return []pgproto3.Message{&pgproto3.BackendKeyData{ProcessID: s.cancelKey.pid, SecretKey: s.cancelKey.secret[:]}}
}

func (r *cancelRegistry) register(e *cancelEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[uint32][]*cancelEntry{}
	}
	r.m[e.pid] = append(r.m[e.pid], e)
}

// unregister removes e, and only e: another session's entry under the same
// process ID stays.
func (r *cancelRegistry) unregister(e *cancelEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := slices.DeleteFunc(r.m[e.pid], func(x *cancelEntry) bool { return x == e })
	if len(l) == 0 {
		delete(r.m, e.pid)
		return
	}
	r.m[e.pid] = l
}

// lookup returns the entry issued as (pid, secret), or nil. Every entry
// under pid is compared, in constant time each.
func (r *cancelRegistry) lookup(pid uint32, secret []byte) *cancelEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	var found *cancelEntry
	for _, e := range r.m[pid] {
		if subtle.ConstantTimeCompare(e.secret[:], secret) == 1 {
			found = e
		}
	}
	return found
}

// forwardCancel sends the upstream's CancelRequest for e over a new
// connection and waits for the server to close it, as libpq does, so the
// cancel has been delivered when this returns.
func forwardCancel(ctx context.Context, e *cancelEntry) error {
	conn, err := e.dialer.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(e.dialer.timeout))
	req := pgproto3.CancelRequest{ProcessID: e.pid, SecretKey: e.upSecret}
	buf, err := req.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, conn)
	return nil
}

package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// session is one client connection and, after login, its upstream
// connection. Two goroutines relay it: the one that accepted it runs
// pumpClient (client → server), a second one runs pumpServer.
type session struct {
	srv   *Server
	start time.Time
	log   *slog.Logger
	info  SessionInfo

	connMu sync.Mutex // guards client.conn swaps and server assignment
	client *leg
	server *leg

	hook                   Interceptor
	fromClient, fromServer MessageSet
	fdec                   frontendDecoders
	bdec                   backendDecoders
	// outClient and outServer are the Out handed to the Interceptor, one
	// per direction, reused for every message (an Out is valid only
	// during the call).
	outClient, outServer Out

	stMu sync.Mutex
	cur  State
	tx   State
	// inflight holds, in order, the client messages that each get one
	// ReadyForQuery: 'Q' (Query), 'F' (FunctionCall), 'S' (Sync).
	inflight []byte
	// extOpen: extended-protocol messages were sent since the last Sync.
	extOpen bool
	// rowFields is 1 + the field count of the RowDescription that the
	// DataRows now arriving answer, when that is known (a simple Query's
	// result set); 0 when not (server goroutine only).
	rowFields int
	// exitState is the state the session was in when it ended, for logs.
	exitState State

	cancelKey *cancelEntry // registered in srv.cancels; nil if the upstream sent no key
	// overCap: the session came in over limits.max_connections and is
	// refused with 53300 once its startup packet is read.
	overCap          bool
	cancel           context.CancelFunc // cancels info.Context (end)
	closing          atomic.Bool
	clientTerminated atomic.Bool // the client sent Terminate
	fatalRelayed     atomic.Bool // the upstream sent a FATAL error
	endOnce          sync.Once
	endErr           atomic.Pointer[pgerr.Error]
	idle             idleLogoff // automatic logoff (idle.go)
}

func newSession(srv *Server, conn net.Conn) *session {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	s := &session{
		srv:    srv,
		start:  time.Now(),
		client: newLeg(conn, srv.Config().Limits.MaxMessageBytes),
	}
	s.info.ID = hex.EncodeToString(id[:])
	s.info.ClientAddr = conn.RemoteAddr()
	s.info.ctx, s.cancel = context.WithCancel(context.Background())
	s.log = srv.log.With("session", s.info.ID, "client", addrString(conn.RemoteAddr()))
	return s
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func (s *session) setClientConn(conn net.Conn) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.client.mu.Lock()
	defer s.client.mu.Unlock()
	s.client.conn = conn
	s.client.in.r = bufio.NewReaderSize(conn, ioBufferSize)
	s.client.w = bufio.NewWriterSize(conn, ioBufferSize)
}

// setServer attaches the upstream connection; it reports false (and
// closes it) when the session is already ending.
func (s *session) setServer(l *leg) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.closing.Load() {
		l.conn.Close()
		return false
	}
	s.server = l
	return true
}

func (s *session) state() State {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	return s.cur
}

// apply runs transition under the state lock; the caller holds stMu.
func (s *session) applyLocked(ev event) {
	s.cur = transition(s.cur, s.tx, ev)
	if ev.kind == evReady {
		s.tx = s.cur
	}
}

// end finishes the session once: it sends e (if any) to the client as a
// FATAL ErrorResponse, then closes both connections, which unblocks both
// relay goroutines. Later calls do nothing.
func (s *session) end(e *pgerr.Error) {
	s.endOnce.Do(func() {
		s.connMu.Lock()
		s.closing.Store(true)
		client, server := s.client.conn, s.server
		s.connMu.Unlock()
		// First: once the client has the FATAL it may close, which ends
		// relay, and serve logs exitState right after (end may run on
		// another goroutine, the idle timer's).
		s.stMu.Lock()
		s.exitState = s.cur
		s.stMu.Unlock()
		if s.cancel != nil {
			s.cancel() // what the Interceptor waits for returns
		}
		if e != nil {
			s.endErr.Store(e)
			// A relay goroutine may hold the writer while blocked on a
			// client that stopped reading: the deadline frees it.
			_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
			s.client.sendFatal(e)
		}
		s.stMu.Lock()
		s.applyLocked(event{kind: evClose})
		s.stMu.Unlock()
		client.Close()
		if server != nil {
			server.conn.Close()
		}
	})
}

// fail ends the session because of err from the startup or login phase.
func (s *session) fail(err error) {
	var ue *upstreamError
	switch pe := pgerr.As(err); {
	case errors.As(err, &ue):
		// The upstream's own error was relayed unchanged.
		s.endErr.Store(pgerr.Fatal(ue.code, "upstream error"))
		s.end(nil)
	case pe != nil:
		s.end(pe)
	default:
		s.end(nil)
	}
	// A client that went away is not worth a line; an upstream that did
	// (its EOF wrapped in a pgerr 08006) is.
	if pgerr.As(err) != nil || !isClientGone(err) {
		log, suppressed := s.srv.failures.note(s.info.ClientAddr, time.Now())
		if !log {
			return
		}
		attrs := []any{"err", clipErr(err, s.info.User, s.info.Database, s.info.ApplicationName), "sqlstate", sqlstateOf(err)}
		if suppressed > 0 {
			attrs = append(attrs, "suppressed", suppressed)
		}
		s.log.Info("connection failed", attrs...)
	}
}

// upstreamError is an ErrorResponse from the upstream server during login
// that has already been relayed to the client.
type upstreamError struct {
	code pgerr.Code
	msg  string
}

func (e *upstreamError) Error() string {
	return "upstream: " + e.msg + " (SQLSTATE " + e.code.String() + ")"
}

func sqlstateOf(err error) string {
	var ue *upstreamError
	if errors.As(err, &ue) {
		return ue.code.String()
	}
	if pe := pgerr.As(err); pe != nil {
		return pe.Code.String()
	}
	return ""
}

func isClientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, errClientGone) || errors.Is(err, os.ErrDeadlineExceeded)
}

// serve runs the whole session: startup, login, relay.
func (s *session) serve(ctx context.Context) {
	rt := s.srv.rt.Load()
	s.info.Config = rt.cfg
	s.info.Instance = rt.cfg.Instance
	stop := context.AfterFunc(ctx, func() {
		s.end(pgerr.Fatal(pgerr.AdminShutdown, "terminating connection due to administrator command"))
	})
	defer stop()
	defer func() {
		if s.cancelKey != nil {
			s.srv.cancels.unregister(s.cancelKey)
		}
		s.end(nil)
	}()
	defer s.recoverPanic() // first to run: a panic ends the session with XX000

	_ = s.client.conn.SetDeadline(time.Now().Add(s.srv.opts.startupTimeout))
	p, err := s.clientStartup(ctx, rt)
	if err != nil {
		s.fail(err)
		return
	}
	if p == nil {
		return // a CancelRequest, already handled
	}
	if s.overCap {
		// PostgreSQL's answer, also after the startup packet.
		s.fail(pgerr.Fatal(pgerr.TooManyConnections, "sorry, too many clients already"))
		return
	}
	_, s.info.TLS = s.clientConn().(*tls.Conn)
	s.info.User = p.get("user")
	s.info.Database = p.get("database")
	if s.info.Database == "" {
		s.info.Database = s.info.User
	}
	s.info.ApplicationName = p.get("application_name")
	s.info.StartupParameters = make(map[string]string, len(p.params))
	for _, kv := range p.params {
		s.info.StartupParameters[kv.key] = kv.value
	}
	s.log = s.log.With("user", clip(s.info.User), "database", clip(s.info.Database), "application_name", clip(s.info.ApplicationName), "tls", s.info.TLS)

	if p.minor > 0 || len(p.options) > 0 {
		// Like PostgreSQL: speak 3.0 and name the options not understood.
		opts := p.options
		if opts == nil {
			opts = []string{}
		}
		if err := s.client.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: opts}); err != nil {
			s.fail(err)
			return
		}
	}

	res, err := rt.login(ctx, s, rt, p)
	if err != nil {
		s.fail(err)
		return
	}
	s.info.ServerParameters = res.params
	if s.srv.opts.interceptor != nil {
		if err := s.resolveRoles(ctx, rt); err != nil {
			s.fail(err)
			return
		}
	}
	if err := s.client.sendNow(append(s.issueCancelKey(res, rt), &pgproto3.ReadyForQuery{TxStatus: res.status})...); err != nil {
		s.fail(err)
		return
	}
	_ = s.client.conn.SetDeadline(time.Time{})
	_ = s.server.conn.SetDeadline(time.Time{})
	s.stMu.Lock()
	s.applyLocked(event{kind: evReady, status: res.status})
	s.armIdleLocked()
	s.stMu.Unlock()

	if f := s.srv.opts.interceptor; f != nil {
		hook := f(&s.info)
		s.connMu.Lock()
		s.hook = hook
		s.connMu.Unlock()
		if s.hook != nil {
			s.fromClient, s.fromServer = s.hook.Intercepts()
		}
	}
	if f := s.srv.opts.sessionHook; f != nil {
		if end := f(&s.info); end != nil {
			defer end()
		}
	}
	s.log.Info("session started")
	s.relay()
	s.stopIdle()
	if s.hook != nil {
		var err error
		if e := s.endErr.Load(); e != nil {
			err = e
		}
		s.hook.SessionEnd(err)
	}
	s.stMu.Lock()
	attrs := []any{"duration_ms", time.Since(s.start).Milliseconds(), "state", s.exitState.String()}
	s.stMu.Unlock()
	if e := s.endErr.Load(); e != nil {
		attrs = append(attrs, "sqlstate", e.Code.String())
	}
	s.log.Info("session closed", attrs...)
}

func (s *session) clientConn() net.Conn {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return s.client.conn
}

// relay runs both directions until the session ends, leaving no goroutine
// behind.
func (s *session) relay() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer s.recoverPanic()
		s.serverEnded(s.serverPump().run())
	}()
	func() {
		defer s.recoverPanic()
		s.clientEnded(s.clientPump().run())
	}()
	<-done
}

// hookError is an error returned by an Interceptor.
type hookError struct{ err error }

func (e *hookError) Error() string { return "interceptor: " + e.err.Error() }
func (e *hookError) Unwrap() error { return e.err }

// endByInterceptor ends the session because its Interceptor returned err:
// the client gets err's SQLSTATE, or XX000 when it carries none.
func (s *session) endByInterceptor(err error) {
	s.log.Warn("session ended by interceptor", "err", err, "sqlstate", sqlstateOf(err))
	if pe := pgerr.As(err); pe != nil {
		s.end(pe)
		return
	}
	s.end(pgerr.Fatal(pgerr.Internal, "internal error in phiproxy"))
}

// clientEnded decides how the session ends when the client→server loop
// stops with err.
func (s *session) clientEnded(err error) {
	if s.closing.Load() {
		return
	}
	var we *writeError
	var tooLarge *errMessageTooLarge
	var he *hookError
	switch {
	case errors.As(err, &he):
		s.endByInterceptor(err)
	case errors.As(err, &we):
		s.log.Warn("lost connection to the upstream server", "err", err)
		s.end(lostUpstream())
	case errors.As(err, &tooLarge):
		s.log.Warn("client message too large", "err", err)
		s.end(pgerr.Fatal(pgerr.ProgramLimitExceeded, "message too large").
			WithDetail(err.Error()))
	case errors.Is(err, errInvalidLength):
		s.end(pgerr.Fatal(pgerr.ProtocolViolation, "invalid message length"))
	case pgerr.As(err) != nil:
		s.end(pgerr.As(err))
	case isClientGone(err):
		s.end(nil)
	default:
		s.log.Info("client connection error", "err", err)
		s.end(nil)
	}
}

// serverEnded decides how the session ends when the server→client loop
// stops with err.
func (s *session) serverEnded(err error) {
	if s.closing.Load() {
		return
	}
	var we *writeError
	var he *hookError
	switch {
	case errors.As(err, &he):
		s.endByInterceptor(err)
	case errors.As(err, &we):
		s.end(nil) // the client went away
	case s.clientTerminated.Load() || s.fatalRelayed.Load():
		s.end(nil) // the upstream closed after Terminate or its own FATAL
	case pgerr.As(err) != nil:
		// The upstream broke the protocol (serverSaw): say how.
		s.log.Warn("invalid message from the upstream server", "err", err)
		s.end(pgerr.As(err))
	default:
		s.log.Warn("lost connection to the upstream server", "err", err)
		s.end(lostUpstream())
	}
}

func lostUpstream() *pgerr.Error {
	return pgerr.Fatal(pgerr.ConnectionFailure, "phiproxy lost the connection to the upstream server").
		WithHint("The upstream PostgreSQL server closed the connection or became unreachable; reconnect to retry.")
}

func writeRaw(l *leg, typ byte, body []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	// The header is built in the writer's free space (a local array would
	// escape through Write and cost an allocation per message).
	hdr := append(l.w.AvailableBuffer(), typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
	if _, err := l.w.Write(hdr); err != nil {
		return &writeError{err}
	}
	if _, err := l.w.Write(body); err != nil {
		return &writeError{err}
	}
	return nil
}

// clientSaw records what a client message means for the protocol state.
func (s *session) clientSaw(typ byte) {
	switch typ {
	case 'Q', 'F', 'S':
		s.stMu.Lock()
		s.inflight = append(s.inflight, typ)
		if typ == 'S' {
			s.extOpen = false
		}
		s.stMu.Unlock()
	case 'P', 'B', 'D', 'E', 'C', 'H':
		s.stMu.Lock()
		s.extOpen = true
		s.stMu.Unlock()
	case 'X':
		s.clientTerminated.Store(true)
	}
}

// serverSaw records what a server message means for the protocol state.
// body is the message's body, or nil for a message too large to hold
// (streamed through), whose length alone is n.
func (s *session) serverSaw(typ byte, n int, body []byte) error {
	switch typ {
	case 'Z':
		s.rowFields = 0
		if n != 1 || len(body) != 1 {
			return pgerr.Fatal(pgerr.ProtocolViolation, "invalid ReadyForQuery from the upstream server")
		}
		st := body[0]
		if st != 'I' && st != 'T' && st != 'E' {
			return pgerr.Fatal(pgerr.ProtocolViolation, "invalid ReadyForQuery from the upstream server")
		}
		s.stMu.Lock()
		if len(s.inflight) > 0 {
			copy(s.inflight, s.inflight[1:])
			s.inflight = s.inflight[:len(s.inflight)-1]
		}
		s.applyLocked(event{kind: evReady, status: st})
		s.armIdleLocked()
		s.stMu.Unlock()
	case 'T', 'D':
		return s.checkRowShape(typ, body)
	case 'E':
		s.rowFields = 0
		if body != nil && isFatalError(body) {
			s.fatalRelayed.Store(true)
			s.log.Info("upstream ended the session", "sqlstate", errorCode(body).String())
		}
		s.stMu.Lock()
		ext := s.extOpen
		if len(s.inflight) > 0 {
			ext = s.inflight[0] == 'S'
		}
		s.applyLocked(event{kind: evError, extended: ext})
		s.stMu.Unlock()
	case 'G':
		s.stMu.Lock()
		s.applyLocked(event{kind: evCopyIn})
		s.stMu.Unlock()
	case 'H', 'W':
		s.stMu.Lock()
		s.applyLocked(event{kind: evCopyOut})
		s.stMu.Unlock()
	case 'C':
		s.rowFields = 0
		s.stMu.Lock()
		if s.cur == StateCopyIn || s.cur == StateCopyOut {
			s.applyLocked(event{kind: evCopyEnd})
		}
		s.stMu.Unlock()
	}
	return nil
}

// checkRowShape checks, within a simple Query's result set, that every
// DataRow has as many fields as its RowDescription announced: a client
// library may take a short row at face value, and an Interceptor
// decrypts by position. (In the extended protocol the description may
// come from an earlier Describe, or from the statement's; the
// Interceptor checks those.) A streamed message (body nil) is not
// checked.
func (s *session) checkRowShape(typ byte, body []byte) error {
	if body == nil {
		if typ == 'T' {
			s.rowFields = 0
		}
		return nil
	}
	if len(body) < 2 {
		return pgerr.Fatal(pgerr.ProtocolViolation, "invalid message from the upstream server: a "+map[byte]string{'T': "RowDescription", 'D': "DataRow"}[typ]+" without its field count")
	}
	n := int(binary.BigEndian.Uint16(body))
	if typ == 'T' {
		s.stMu.Lock()
		// A Query's result set, and no extended message is waiting
		// for its answer ahead of it (a batch without Sync before the
		// Query: a Describe's row shape may then differ from the rows').
		simple := len(s.inflight) > 0 && s.inflight[0] == 'Q' && !s.extOpen
		s.stMu.Unlock()
		s.rowFields = 0
		if simple {
			s.rowFields = n + 1
		}
		return nil
	}
	if s.rowFields > 0 && n != s.rowFields-1 {
		return pgerr.Fatal(pgerr.ProtocolViolation, "invalid DataRow from the upstream server: "+strconv.Itoa(n)+" fields where its RowDescription has "+strconv.Itoa(s.rowFields-1))
	}
	return nil
}

package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy/auth"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Server accepts PostgreSQL clients and relays each session to the
// upstream server. Create it with New; it is safe for concurrent use.
type Server struct {
	log  *slog.Logger
	opts options

	rt      atomic.Pointer[runtimeConfig]
	cancels cancelRegistry

	mu        sync.Mutex
	listeners map[*net.Listener]struct{}
	sessions  map[*session]struct{}
	// admitted counts the sessions within limits.max_connections (the
	// others only get 53300).
	admitted   int
	inShutdown atomic.Bool
	conns      sync.WaitGroup
	// idle is closed (and replaced) whenever the session set becomes empty.
	idle chan struct{}
	// failures rate-limits the log lines of failed connections per
	// client host (logfail.go).
	failures failureLog
}

// runtimeConfig is everything derived from one Config; Reload swaps it
// atomically and sessions keep the one they started with.
type runtimeConfig struct {
	cfg       *config.Config
	clientTLS *tls.Config // nil when client_tls.mode is disable
	upstream  *upstreamDialer
	login     loginFunc
	// closers release what the runtime holds (the catalog connection).
	closers []func()
	// catalog is the catalog connection pool (verifier lookups, role
	// memberships); roles resolves a session's memberships.
	catalog *pgxpool.Pool
	roles   RoleLookup
	// channelBinding is tls-server-end-point of the client certificate,
	// nil when SCRAM-SHA-256-PLUS cannot be offered.
	channelBinding []byte
}

// Option configures a Server.
type Option func(*options)

type options struct {
	logger         *slog.Logger
	interceptor    func(*SessionInfo) Interceptor
	startupTimeout time.Duration
	lookup         auth.LookupFunc
	mockSecret     []byte
	roles          RoleLookup
	sessionHook    func(*SessionInfo) func()
	cancelHook     func(client net.Addr, forwarded bool)
}

// WithLogger sets the logger (default: slog.Default()). Logs carry
// connection metadata, durations and SQLSTATEs, never SQL text, parameters
// or row data.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithInterceptor installs a per-session Interceptor factory. It is called
// once per session after login; returning nil makes that session a pure
// pass-through.
func WithInterceptor(f func(*SessionInfo) Interceptor) Option {
	return func(o *options) { o.interceptor = f }
}

// WithSessionHook installs f, called once per session when its login has
// succeeded (its SessionInfo is complete), on the session's goroutine; the
// function f returns is called once when the session has ended. Metrics
// count sessions with it: it sees every logged-in session, pass-through
// ones too. f must not block.
func WithSessionHook(f func(*SessionInfo) (end func())) Option {
	return func(o *options) { o.sessionHook = f }
}

// WithCancelHook is called for each CancelRequest a client sends, with
// the client's address and whether its key named a session (and the
// request went upstream): the audit trail records both.
func WithCancelHook(f func(client net.Addr, forwarded bool)) Option {
	return func(o *options) { o.cancelHook = f }
}

// WithStartupTimeout bounds the time a client has from connecting to
// completing authentication (PostgreSQL's authentication_timeout; default
// one minute).
func WithStartupTimeout(d time.Duration) Option { return func(o *options) { o.startupTimeout = d } }

// New builds a Server for cfg. It loads the client certificate and the
// upstream root certificate now, so that configuration mistakes surface
// before the first client does.
func New(cfg *config.Config, opts ...Option) (*Server, error) {
	o := options{logger: slog.Default(), startupTimeout: time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	if o.mockSecret == nil {
		o.mockSecret = auth.NewMockSecret() // one per Server, kept across reloads
	}
	s := &Server{
		log:       o.logger,
		opts:      o,
		listeners: map[*net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
		idle:      make(chan struct{}),
	}
	rt, err := s.buildRuntime(cfg)
	if err != nil {
		return nil, err
	}
	s.rt.Store(rt)
	return s, nil
}

func (s *Server) buildRuntime(cfg *config.Config) (*runtimeConfig, error) {
	rt := &runtimeConfig{cfg: cfg}
	if cfg.ClientTLS.Mode != config.TLSDisable {
		cert, err := tls.LoadX509KeyPair(cfg.ClientTLS.Cert, cfg.ClientTLS.Key)
		if err != nil {
			return nil, fmt.Errorf("client_tls: %w", err)
		}
		rt.clientTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if cb, err := auth.TLSServerEndPoint(cert.Leaf); err == nil {
			rt.channelBinding = cb
		} else {
			s.log.Warn("client certificate allows no channel binding; SCRAM-SHA-256-PLUS is not offered", "err", err)
		}
	}
	up, err := newUpstreamDialer(cfg.Upstream, cfg.Limits.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	rt.upstream = up
	if rt.catalog, err = NewCatalogPool(cfg.CatalogDSN); err != nil {
		return nil, err
	}
	rt.closers = append(rt.closers, rt.catalog.Close)
	rt.roles = rt.roleLookup(&s.opts)
	switch cfg.Auth.Mode {
	case config.AuthRelay:
		rt.login = relayLogin
	case config.AuthTerminate:
		login, err := s.terminateLogin(cfg, rt)
		if err != nil {
			return nil, err
		}
		rt.login = login
	default:
		return nil, fmt.Errorf("auth.mode %q is not supported", cfg.Auth.Mode)
	}
	return rt, nil
}

// Reload swaps in a new configuration for sessions that start from now on;
// running sessions keep theirs. The listen address is not changed by a
// reload.
func (s *Server) Reload(cfg *config.Config) error {
	rt, err := s.buildRuntime(cfg)
	if err != nil {
		return err
	}
	old := s.rt.Swap(rt)
	old.close()
	if old.cfg.Listen != cfg.Listen {
		s.log.Warn("config reloaded; the listen address only changes on restart", "listen", old.cfg.Listen)
	}
	return nil
}

// Config returns the configuration new sessions use.
func (s *Server) Config() *config.Config { return s.rt.Load().cfg }

// ListenAndServe listens on cfg.Listen and serves until Shutdown or Close.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.Config().Listen)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve accepts clients on ln until Shutdown or Close, then returns
// ErrServerClosed. ctx is the parent of every session: cancelling it cuts
// all sessions at once (call Shutdown first for a graceful drain). Serve
// closes ln when it returns. It does not return when accepting fails for
// want of resources (out of file descriptors): it backs off and retries,
// as net/http does. Over limits.max_connections, a client gets FATAL 53300
// "sorry, too many clients already" after its startup packet, as from
// PostgreSQL; its CancelRequest is still served.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.trackListener(&ln, true) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.trackListener(&ln, false)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.log.Info("listening", "addr", ln.Addr().String())
	var retry acceptRetry
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.inShutdown.Load() {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				s.Close()
				return ctx.Err()
			}
			if retryableAccept(err) {
				retry.wait(ctx, s.log, err)
				continue
			}
			return err
		}
		retry.reset()
		sess := newSession(s, conn)
		if !s.trackSession(sess, true) {
			sess.client.sendFatal(pgerr.Fatal(pgerr.CannotConnectNow, "the proxy is shutting down"))
			conn.Close()
			continue
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			defer s.trackSession(sess, false)
			sess.serve(ctx)
		}()
	}
}

// acceptRetry is net/http's answer to an accept that fails for want of
// resources (out of file descriptors, EMFILE/ENFILE, or buffers): wait 5ms,
// doubling up to 1s, and try again, while connections that end free what
// is missing. Serve never returns for it. The warning is logged at most
// once a second, with the number of failures since the last one.
type acceptRetry struct {
	backoff time.Duration
	logged  time.Time
	failed  int
}

func (r *acceptRetry) wait(ctx context.Context, log *slog.Logger, err error) {
	r.backoff = min(max(2*r.backoff, 5*time.Millisecond), time.Second)
	r.failed++
	if now := time.Now(); now.Sub(r.logged) >= time.Second {
		log.Warn("accept failed; retrying", "err", err, "backoff", r.backoff, "failures", r.failed)
		r.logged, r.failed = now, 0
	}
	t := time.NewTimer(r.backoff)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (r *acceptRetry) reset() { r.backoff = 0 }

// retryableAccept reports whether an Accept error is temporary: a lack of
// file descriptors or kernel memory, a timeout, or what a listener
// reports as temporary (the deprecated net.Error.Temporary, which
// net/http's Serve still honours for listeners that wrap TCP).
func retryableAccept(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var tmp interface{ Temporary() bool }
	return errors.As(err, &tmp) && tmp.Temporary()
}

func (s *Server) trackListener(ln *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.inShutdown.Load() {
			return false
		}
		s.listeners[ln] = struct{}{}
	} else {
		delete(s.listeners, ln)
	}
	return true
}

func (s *Server) trackSession(sess *session, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.inShutdown.Load() {
			return false
		}
		s.sessions[sess] = struct{}{}
		if limit := s.Config().Limits.MaxConnections; limit > 0 && s.admitted >= limit {
			sess.overCap = true
		} else {
			s.admitted++
		}
		return true
	}
	if _, ok := s.sessions[sess]; ok && !sess.overCap {
		s.admitted--
	}
	delete(s.sessions, sess)
	if len(s.sessions) == 0 {
		close(s.idle)
		s.idle = make(chan struct{})
	}
	return true
}

// Sessions returns the number of open client connections.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops the server gracefully, in net/http.Server's order: it
// closes the listeners, cuts connections that have not logged in yet, lets
// sessions finish for up to limits.drain_timeout (or until ctx is done),
// then sends the remaining ones FATAL 57P01 "terminating connection due to
// administrator command", closes them and waits for their goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.inShutdown.Store(true)
	for ln := range s.listeners {
		(*ln).Close()
	}
	var startup []*session
	for sess := range s.sessions {
		if sess.state() == StateStartup {
			startup = append(startup, sess)
		}
	}
	n := len(s.sessions)
	idle := s.idle
	s.mu.Unlock()
	s.log.Info("shutting down", "sessions", n, "drain_timeout", s.Config().Limits.DrainTimeout)
	for _, sess := range startup {
		sess.end(pgerr.Fatal(pgerr.CannotConnectNow, "the proxy is shutting down"))
	}

	drain := time.NewTimer(s.Config().Limits.DrainTimeout)
	defer drain.Stop()
	var err error
	if n > 0 {
		select {
		case <-idle:
		case <-drain.C:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	s.cutAll(pgerr.Fatal(pgerr.AdminShutdown, "terminating connection due to administrator command"))
	s.conns.Wait()
	s.rt.Load().close()
	return err
}

// Close stops the server at once: listeners closed, every session cut
// with 57P01.
func (s *Server) Close() error {
	s.mu.Lock()
	s.inShutdown.Store(true)
	for ln := range s.listeners {
		(*ln).Close()
	}
	s.mu.Unlock()
	s.cutAll(pgerr.Fatal(pgerr.AdminShutdown, "terminating connection due to administrator command"))
	s.conns.Wait()
	s.rt.Load().close()
	return nil
}

func (rt *runtimeConfig) close() {
	for _, f := range rt.closers {
		f()
	}
}

func (s *Server) cutAll(e *pgerr.Error) {
	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	for _, sess := range all {
		sess.end(e)
	}
}

package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// Server is the admin HTTP server.
type Server struct {
	cfg   *config.Admin
	token atomic.Pointer[Token]
	http  *http.Server
	log   *slog.Logger
	ready Readiness
	// draining: the proxy is shutting down; /readyz says so (a load
	// balancer stops sending new clients).
	draining atomic.Bool
	// reload is the outcome of the last SIGHUP reload ("" before any).
	reload atomic.Pointer[string]
}

// Reloaded records the outcome of a SIGHUP reload for /readyz: a
// rejected config is shown (the instance stays ready: it runs the
// previous config) until a reload succeeds.
func (s *Server) Reloaded(err error) {
	msg := "ok"
	if err != nil {
		msg = "warning: the last reload was rejected at " + time.Now().UTC().Format(time.RFC3339) + "; running the previous config: " + err.Error()
	}
	s.reload.Store(&msg)
}

// Readiness is what /readyz checks.
type Readiness struct {
	// Upstream is the PostgreSQL address a TCP dial must reach
	// (upstream.address).
	Upstream string
	// Status is phi.Proxy.Status (keys, catalog age); nil: not checked.
	Status func() phi.Status
	// CatalogMaxAge bounds the catalog's age (admin.catalog_max_age); 0:
	// not checked.
	CatalogMaxAge time.Duration
	// DialTimeout bounds the upstream dial (default 2s).
	DialTimeout time.Duration
	// Lockdown is the switch (phi.Proxy); nil: /lockdown answers 404.
	Lockdown Lockdown
	// Audit is nil while PHI may be served: the audit trail writes (strict
	// mode) and the Kafka export keeps up (phi.Auditor.Admit); nil: not
	// checked (no trail).
	Audit func() error
}

// New builds the admin server for cfg: it reads the token file now (an
// error names the file and what to do), and the TLS certificate when
// admin.cert/key are set. metrics may be nil: /metrics then answers 404.
func New(cfg *config.Admin, metrics *Metrics, ready Readiness, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	tok, err := LoadToken(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	if ready.DialTimeout <= 0 {
		ready.DialTimeout = 2 * time.Second
	}
	s := &Server{cfg: cfg, log: log, ready: ready}
	s.token.Store(&tok)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /readyz", s.authorized(http.HandlerFunc(s.readyz)))
	if metrics != nil {
		mux.Handle("GET /metrics", s.authorized(promhttp.HandlerFor(metrics.Registry(), promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError), ErrorHandling: promhttp.ContinueOnError,
		})))
	}
	// Anything else needs the token too: without it, even "not found"
	// says nothing about what is served.
	if ready.Lockdown != nil {
		mux.Handle("GET /lockdown", s.authorized(http.HandlerFunc(s.lockdownGet)))
		mux.Handle("POST /lockdown", s.authorized(http.HandlerFunc(s.lockdownPost)))
	}
	mux.Handle("/", s.authorized(http.NotFoundHandler()))
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.Cert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("admin TLS: %w", err)
		}
		s.http.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	return s, nil
}

// Listen opens admin.listen.
func (s *Server) Listen(ctx context.Context) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	return ln, nil
}

// Serve serves on ln (over TLS when admin.cert/key are set) until
// Shutdown; it then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	if s.http.TLSConfig != nil {
		ln = tls.NewListener(ln, s.http.TLSConfig)
	}
	s.log.Info("admin API listening", "addr", ln.Addr().String(), "tls", s.http.TLSConfig != nil)
	if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// ReloadToken reads admin.token_file again (SIGHUP: rotating the token
// needs no restart). On an error the old token stays in force.
func (s *Server) ReloadToken() error {
	tok, err := LoadToken(s.cfg.TokenFile)
	if err != nil {
		return err
	}
	s.token.Store(&tok)
	return nil
}

// Draining makes /readyz answer 503 from now on: call it when the proxy
// starts to drain, so that a load balancer sends new clients elsewhere
// while the admin API keeps serving.
func (s *Server) Draining() { s.draining.Store(true) }

// Shutdown stops the server gracefully (net/http.Server.Shutdown).
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// authorized lets a request with the bearer token through; any other gets
// 401 with WWW-Authenticate, and nothing of the handler.
func (s *Server) authorized(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		scheme, tok, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || !s.token.Load().matches([]byte(strings.TrimSpace(tok))) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="phiproxy"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// readiness is /readyz's answer.
type readiness struct {
	Ready bool `json:"ready"`
	// Checks maps each check to "ok" or why it failed.
	Checks map[string]string `json:"checks"`
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	res := s.check(r.Context())
	w.Header().Set("Content-Type", "application/json")
	if !res.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(res)
}

// check runs the readiness checks.
func (s *Server) check(ctx context.Context) readiness {
	res := readiness{Ready: true, Checks: map[string]string{}}
	fail := func(name, why string) {
		res.Ready = false
		res.Checks[name] = why
	}
	if s.draining.Load() {
		fail("draining", "shutting down: sessions are draining")
	}
	d := net.Dialer{Timeout: s.ready.DialTimeout}
	if c, err := d.DialContext(ctx, "tcp", s.ready.Upstream); err != nil {
		fail("upstream", "unreachable: "+err.Error())
	} else {
		c.Close()
		res.Checks["upstream"] = "ok"
	}
	if r := s.reload.Load(); r != nil {
		res.Checks["reload"] = *r
	}
	if s.ready.Audit != nil {
		if err := s.ready.Audit(); err != nil {
			fail("audit", err.Error())
		} else {
			res.Checks["audit"] = "ok"
		}
	}
	if s.ready.Status == nil {
		return res
	}
	st := s.ready.Status()
	if !st.PHI {
		res.Checks["keys"] = "ok (no PHI configured)"
		res.Checks["catalog"] = "ok (no PHI configured)"
		return res
	}
	if st.KeysLoaded {
		res.Checks["keys"] = "ok"
	} else {
		fail("keys", "not loaded")
	}
	switch age := time.Since(st.CatalogRead); {
	case st.CatalogRead.IsZero():
		fail("catalog", "never read")
	case s.ready.CatalogMaxAge > 0 && age > s.ready.CatalogMaxAge:
		fail("catalog", fmt.Sprintf("last read %s ago, more than admin.catalog_max_age %s", age.Round(time.Second), s.ready.CatalogMaxAge))
	default:
		res.Checks["catalog"] = "ok"
	}
	return res
}

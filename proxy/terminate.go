package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy/auth"
)

// WithLookup replaces the verifier lookup of auth.mode terminate (by
// default auth.query over catalog_dsn).
func WithLookup(f auth.LookupFunc) Option { return func(o *options) { o.lookup = f } }

// WithMockSecret sets the secret that keys the mock salts given to unknown
// roles (auth.LoadMockSecret reads it from state_dir). Without it the
// Server draws one at random, and an unknown role's salt then changes with
// every restart and reload where a real role's does not.
func WithMockSecret(secret []byte) Option {
	return func(o *options) { o.mockSecret = slices.Clone(secret) }
}

// terminateLogin builds the login of auth.mode terminate: the client is
// authenticated by package auth against the verifier that auth.query
// returns over the catalog connection, then the proxy logs in upstream with
// the credentials recovered from that exchange.
func (s *Server) terminateLogin(cfg *config.Config, rt *runtimeConfig) (loginFunc, error) {
	lookup := s.opts.lookup
	if lookup == nil {
		lookup = auth.QueryLookup(rt.catalog, cfg.Auth.Query)
	}
	a, err := auth.New(auth.Options{Lookup: lookup, MockSecret: s.opts.mockSecret})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, ss *session, rt *runtimeConfig, p *startupPacket) (*loginResult, error) {
		return terminate(ctx, ss, rt, p, a)
	}, nil
}

func terminate(ctx context.Context, s *session, rt *runtimeConfig, p *startupPacket, a *auth.Authenticator) (*loginResult, error) {
	limit := rt.cfg.Limits.MaxMessageBytes
	be := pgproto3.NewBackend(&frameReader{r: s.client.in.r}, legWriter{s.client})
	be.SetMaxBodyLen(limit)
	client := auth.Client{User: s.info.User}
	if _, ok := s.clientConn().(*tls.Conn); ok {
		client.ChannelBinding = rt.channelBinding
	}
	creds, err := a.Authenticate(ctx, be, client)
	if err != nil {
		if errors.Is(err, auth.ErrClientGone) {
			return nil, errClientGone
		}
		return nil, err
	}
	defer creds.Wipe()

	up, err := connectUpstream(ctx, s, rt, p)
	if err != nil {
		return nil, err
	}
	fe := pgproto3.NewFrontend(&frameReader{r: up.in.r}, legWriter{up})
	fe.SetMaxBodyLen(limit)
	var upTLS *tls.ConnectionState
	if tc, ok := up.conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		upTLS = &st
	}
	if err := creds.Login(ctx, fe, upTLS); err != nil {
		var ue *auth.UpstreamError
		switch {
		case errors.As(err, &ue):
			// The upstream's own error, unchanged.
			_ = s.client.sendNow(&ue.Response)
			return nil, &upstreamError{code: upstreamCode(ue.Response.Code), msg: "upstream login refused"}
		case pgerr.As(err) != nil:
			return nil, err
		default:
			return nil, lostUpstreamDuringLogin(err)
		}
	}
	if err := s.client.send(&pgproto3.AuthenticationOk{}); err != nil {
		return nil, err
	}
	return relayUntilReady(s, up)
}

// frameReader hands pgproto3 the bytes of a bufio.Reader without reading
// past the end of the current message, so that whatever the peer sent
// after the login exchange stays in the buffer for the relay loop.
type frameReader struct {
	r         *bufio.Reader
	remaining int
}

func (f *frameReader) Read(p []byte) (int, error) {
	if f.remaining == 0 {
		h, err := f.r.Peek(5)
		if err != nil {
			if len(h) == 0 {
				return 0, err
			}
			p = p[:min(len(p), len(h))]
			return f.r.Read(p)
		}
		n := int(int32(binary.BigEndian.Uint32(h[1:])))
		f.remaining = 1 + max(n, 4)
	}
	if len(p) > f.remaining {
		p = p[:f.remaining]
	}
	n, err := f.r.Read(p)
	f.remaining -= n
	return n, err
}

// legWriter lets pgproto3 write through a leg: each Flush of pgproto3 is
// one Write here, which is buffered and flushed at once.
type legWriter struct{ l *leg }

func (w legWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	if _, err := w.l.w.Write(p); err != nil {
		return 0, err
	}
	if err := w.l.w.Flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// NewCatalogPool opens the pool of catalog connections (package proxy's
// verifier lookups and role memberships; package phi's catalog snapshots): connections are opened on demand (none at startup, so
// a catalog that is down does not stop the proxy from starting), each is
// pinged when it is handed out, and idle ones are checked every
// catalogHealthPeriod. A dead connection — an upstream restart — is
// dropped and replaced before a login uses it, and concurrent logins no
// longer wait for one another. pool_max_conns and the other pool_*
// parameters of pgxpool may be set in catalog_dsn.
func NewCatalogPool(dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("catalog_dsn: " + err.Error())
	}
	cfg.HealthCheckPeriod = catalogHealthPeriod
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	return pgxpool.NewWithConfig(context.Background(), cfg)
}

// catalogHealthPeriod is how often idle catalog connections are checked.
const catalogHealthPeriod = 10 * time.Second

package auth

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgerr"
)

// catalogLookup connects as the non-superuser catalog role and looks
// verifiers up with query.
func catalogLookup(t *testing.T, query string) LookupFunc {
	t.Helper()
	ctx := context.Background()
	conn := testenv.Connect(t, ctx, cluster.DSN(catalogRole, catalogPassword, "postgres", "sslmode=disable"), nil)
	var mu sync.Mutex // a *pgx.Conn serves one query at a time
	lookup := QueryLookup(conn, query)
	return func(ctx context.Context, role string) (*Verifier, error) {
		mu.Lock()
		defer mu.Unlock()
		return lookup(ctx, role)
	}
}

const functionQuery = "SELECT rolname, rolpassword, rolvaliduntil, rolcanlogin FROM phiproxy.user_lookup($1)"

// testProxy is the smallest proxy that uses this package as the proxy
// package does: client-leg TLS optional, Authenticate, dial upstream,
// Login, AuthenticationOk, then plain byte relay.
type testProxy struct {
	t           *testing.T
	ln          net.Listener
	auth        *Authenticator
	tlsConfig   *tls.Config // nil: SSLRequest answered 'N'
	cbData      []byte
	upstreamTLS bool
	wg          sync.WaitGroup
}

type proxyOptions struct {
	clientTLS   bool
	upstreamTLS bool
	query       string
}

func startProxy(t *testing.T, o proxyOptions) *testProxy {
	t.Helper()
	if o.query == "" {
		o.query = functionQuery
	}
	a, err := New(Options{Lookup: catalogLookup(t, o.query)})
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{t: t, auth: a, upstreamTLS: o.upstreamTLS}
	if o.clientTLS {
		certFile, keyFile, err := cluster.CA.Issue("localhost", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		if p.cbData, err = TLSServerEndPoint(cert.Leaf); err != nil {
			t.Fatal(err)
		}
		p.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if p.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			conn, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(conn)
			}()
		}
	}()
	t.Cleanup(func() {
		p.ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *testProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *testProxy) serve(conn net.Conn) {
	defer func() { conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	be := pgproto3.NewBackend(conn, conn)
	var startup *pgproto3.StartupMessage
	tlsOn := false
	for startup == nil {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if p.tlsConfig == nil || tlsOn {
				conn.Write([]byte{'N'})
				continue
			}
			conn.Write([]byte{'S'})
			tc := tls.Server(conn, p.tlsConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				return
			}
			conn, tlsOn = tc, true
			be = pgproto3.NewBackend(conn, conn)
		case *pgproto3.GSSEncRequest:
			conn.Write([]byte{'N'})
		case *pgproto3.StartupMessage:
			startup = m
		default:
			return
		}
	}
	client := Client{User: startup.Parameters["user"]}
	if tlsOn {
		client.ChannelBinding = p.cbData
	}
	creds, err := p.auth.Authenticate(ctx, be, client)
	if err != nil {
		p.fail(be, err)
		return
	}
	defer creds.Wipe()

	upstream, state, err := dialUpstream(ctx, p.upstreamTLS)
	if err != nil {
		p.fail(be, pgerr.Fatal(pgerr.ConnectionFailure, "could not connect to upstream"))
		return
	}
	defer upstream.Close()
	fe := pgproto3.NewFrontend(upstream, upstream)
	params := map[string]string{}
	for k, v := range startup.Parameters {
		params[k] = v
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := fe.Flush(); err != nil {
		return
	}
	if err := creds.Login(ctx, fe, state); err != nil {
		p.fail(be, err)
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	// Relay the rest of startup through pgproto3 (it may have read ahead),
	// then bytes.
	for {
		msg, err := fe.Receive()
		if err != nil {
			return
		}
		be.Send(msg)
		if _, ok := msg.(*pgproto3.ErrorResponse); ok {
			be.Flush()
			return
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if err := be.Flush(); err != nil || fe.ReadBufferLen() != 0 {
		return
	}
	conn.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() { io.Copy(upstream, conn); upstream.Close(); done <- struct{}{} }()
	go func() { io.Copy(conn, upstream); conn.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// fail sends err to the client as PostgreSQL would send it.
func (p *testProxy) fail(be *pgproto3.Backend, err error) {
	var ue *UpstreamError
	switch {
	case errors.Is(err, ErrClientGone):
		return
	case errors.As(err, &ue):
		be.Send(&ue.Response)
	default:
		pe := pgerr.As(err)
		if pe == nil {
			p.t.Logf("test proxy: %v", err)
			pe = pgerr.Fatal(pgerr.ConnectionFailure, "upstream login failed")
		}
		be.Send(&pgproto3.ErrorResponse{Severity: string(pe.Severity), SeverityUnlocalized: string(pe.Severity),
			Code: pe.Code.String(), Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint})
	}
	be.Flush()
}

// dialUpstream connects to the cluster, with TLS (verify-full) if asked.
func dialUpstream(ctx context.Context, useTLS bool) (net.Conn, *tls.ConnectionState, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", cluster.Addr())
	if err != nil {
		return nil, nil, err
	}
	if !useTLS {
		return conn, nil, nil
	}
	req := make([]byte, 8)
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], 80877103)
	resp := make([]byte, 1)
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if _, err := io.ReadFull(conn, resp); err != nil || resp[0] != 'S' {
		conn.Close()
		return nil, nil, errors.New("upstream refused TLS")
	}
	tc := tls.Client(conn, &tls.Config{RootCAs: cluster.CA.Pool(), ServerName: cluster.Host, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, nil, err
	}
	st := tc.ConnectionState()
	return tc, &st, nil
}

// writeRecorder keeps every byte written to an upstream connection.
type writeRecorder struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (w *writeRecorder) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, b...)
	w.mu.Unlock()
	return w.Conn.Write(b)
}

func portString(port int) string { return strconv.Itoa(port) }

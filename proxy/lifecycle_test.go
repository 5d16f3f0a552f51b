package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/proxy/auth"
)

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// superConn is a direct superuser connection for checks behind the proxy.
func superConn(t *testing.T, ctx context.Context) *pgx.Conn {
	return connect(t, ctx, testCluster.SuperDSN())
}

func TestCancelThroughContextTimeout(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	conn := connect(t, ctx, p.dsn("application_name=canceltest"), testenv.CancelOnExpiry)
	sleepCanceled(t, ctx, conn, 200*time.Millisecond)
	// The backend really stopped sleeping.
	var active int
	if err := superConn(t, ctx).QueryRow(ctx,
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'canceltest' AND query LIKE '%pg_sleep%' AND state = 'active'").Scan(&active); err != nil {
		t.Fatal(err)
	}
	if active != 0 {
		t.Fatal("the upstream backend is still running pg_sleep")
	}
}

func TestUpstreamDown(t *testing.T) {
	ctx := testCtx(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, mode := range []string{"relay", "terminate"} {
		t.Run(mode, func(t *testing.T) {
			cfg := proxyConfig(t, closed, "auth: {mode: "+mode+"}")
			if mode == "terminate" {
				// The verifier lookup must work for the upstream dial
				// to be reached.
				cfg = proxyConfig(t, closed, "auth: {mode: terminate}")
			}
			p := startProxy(t, cfg)
			_, err := pgx.Connect(ctx, p.dsn())
			if code := sqlstate(err); !strings.HasPrefix(code, "08") {
				t.Fatalf("got %v, want an 08xxx SQLSTATE", err)
			}
		})
	}
}

func TestUpstreamLostMidQuery(t *testing.T) {
	ctx := testCtx(t)
	fwd := startForwarder(t, testCluster.Addr())
	p := startProxy(t, proxyConfig(t, fwd.addr()))
	conn := connect(t, ctx, p.dsn())
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(5)")
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	fwd.kill()
	select {
	case err := <-done:
		if sqlstate(err) != "08006" {
			t.Fatalf("got %v, want SQLSTATE 08006", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the client was not told that the upstream is gone")
	}
}

func TestUpstreamLostWhileIdle(t *testing.T) {
	ctx := testCtx(t)
	fwd := startForwarder(t, testCluster.Addr())
	p := startProxy(t, proxyConfig(t, fwd.addr()))
	_, fe := testenv.Hijack(t, ctx, p.dsn(), 3*time.Second)
	fwd.kill()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("no ErrorResponse before the close: %v", err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "08006" || e.Severity != "FATAL" {
		t.Fatalf("got %#v, want FATAL 08006", msg)
	}
}

func TestClientGoneClosesUpstream(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	super := superConn(t, ctx)
	// Warm up: the catalog connection and its goroutines exist from now on.
	warm := connect(t, ctx, p.dsn())
	warm.Close(ctx)
	waitFor(t, func() bool { return p.srv.Sessions() == 0 }, "the warm-up session to end")
	base := runtime.NumGoroutine()

	var wg sync.WaitGroup
	pids := make([]uint32, 4)
	for i := range pids {
		conn, err := pgx.Connect(ctx, p.dsn())
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pids[i]); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				conn.PgConn().Conn().Close() // vanishes without Terminate
			} else {
				// Gone in the middle of a query.
				go func() { time.Sleep(100 * time.Millisecond); conn.PgConn().Conn().Close() }()
				conn.Exec(ctx, "SELECT pg_sleep(3)")
			}
		}()
	}
	wg.Wait()
	waitFor(t, func() bool {
		var n int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	}, "the upstream backends to end")
	waitFor(t, func() bool { return p.srv.Sessions() == 0 && runtime.NumGoroutine() <= base }, "the session goroutines to end")
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out waiting for %s\n%s", what, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestShutdownDrainsThenTerminates(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr(), "limits: {drain_timeout: 1500ms}"))
	idle, err := pgconn.Connect(ctx, p.dsn())
	if err != nil {
		t.Fatal(err)
	}
	busy := connect(t, ctx, p.dsn())
	busyDone := make(chan error, 1)
	go func() {
		_, err := busy.Exec(ctx, "SELECT pg_sleep(0.5)")
		if err == nil {
			err = busy.Close(ctx)
		}
		busyDone <- err
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	shut := make(chan error, 1)
	go func() { shut <- p.srv.Shutdown(ctx) }()
	if err := <-busyDone; err != nil {
		t.Fatalf("a session that finished within the drain timeout was cut: %v", err)
	}
	waitFor(t, func() bool {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, "the listener to close")
	hj, err := idle.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	hj.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err := hj.Frontend.Receive()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || e.Code != "57P01" || e.Severity != "FATAL" || e.Message != "terminating connection due to administrator command" {
		t.Fatalf("got %#v, want FATAL 57P01", msg)
	}
	if d := time.Since(start); d < 1400*time.Millisecond {
		t.Fatalf("the idle session was cut after %v, before the drain timeout", d)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

func TestShutdownReturnsWhenSessionsEnd(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr(), "limits: {drain_timeout: 10s}"))
	conn := connect(t, ctx, p.dsn())
	go func() { time.Sleep(200 * time.Millisecond); conn.Close(ctx) }()
	start := time.Now()
	if err := p.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown waited %v although the last session ended", d)
	}
}

func TestClientTLSModes(t *testing.T) {
	ctx := testCtx(t)
	cert, key, err := testCluster.CA.Issue("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ca := testCluster.CA.CertFile
	for _, tc := range []struct {
		mode, sslmode string
		wantTLS       bool
		wantCode      string // "" = success
	}{
		{"disable", "disable", false, ""},
		{"disable", "prefer", false, ""},
		{"disable", "require", false, "connect"},
		{"allow", "disable", false, ""},
		{"allow", "require", true, ""},
		{"allow", "verify-full&sslrootcert=" + ca + "&host=localhost", true, ""},
		{"require", "disable", false, "28000"},
		{"require", "require", true, ""},
		{"require", "verify-full&sslrootcert=" + ca + "&host=localhost&channel_binding=require", true, ""},
	} {
		t.Run(tc.mode+" with sslmode "+strings.SplitN(tc.sslmode, "&", 2)[0], func(t *testing.T) {
			extra := "client_tls: {mode: " + tc.mode + ", cert: " + cert + ", key: " + key + "}"
			p := startProxy(t, proxyConfig(t, testCluster.Addr(), extra))
			dsn := strings.Replace(p.dsn(), "sslmode=disable", "sslmode="+tc.sslmode, 1)
			conn, err := pgx.Connect(ctx, dsn)
			switch {
			case tc.wantCode == "connect":
				if err == nil {
					conn.Close(ctx)
					t.Fatal("connected")
				}
				return
			case tc.wantCode != "":
				if sqlstate(err) != tc.wantCode {
					t.Fatalf("got %v, want SQLSTATE %s", err, tc.wantCode)
				}
				if tc.wantCode == "28000" && !strings.Contains(err.Error(), "requires an encrypted connection") {
					t.Fatalf("unclear message: %v", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			if _, isTLS := conn.PgConn().Conn().(*tls.Conn); isTLS != tc.wantTLS {
				t.Fatalf("TLS = %v, want %v", isTLS, tc.wantTLS)
			}
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestUpstreamSSLModes(t *testing.T) {
	ctx := testCtx(t)
	plain := startForwarder(t, testCluster.Addr())
	ca := testCluster.CA.CertFile
	otherCA := t.TempDir()
	other, err := newTestCA(otherCA)
	if err != nil {
		t.Fatal(err)
	}
	for _, up := range []struct {
		name, addr string
		tls        bool
	}{{"TLS upstream", testCluster.Addr(), true}, {"plain upstream", plain.addr(), false}} {
		for _, tc := range []struct {
			upstream string
			needTLS  bool // fails against a plain upstream
			fails    bool // fails even against the TLS upstream
		}{
			{"sslmode: disable", false, false},
			{"sslmode: allow", false, false},
			{"sslmode: prefer", false, false},
			{"sslmode: require", true, false},
			{"sslmode: require, sslrootcert: " + other, true, true}, // libpq: a root cert makes require verify the chain
			{"sslmode: verify-ca, sslrootcert: " + ca, true, false},
			{"sslmode: verify-ca, sslrootcert: " + ca + ", server_name: wrong.example", true, false},
			{"sslmode: verify-full, sslrootcert: " + ca, true, false},
			{"sslmode: verify-full, sslrootcert: " + ca + ", server_name: wrong.example", true, true},
			{"sslmode: verify-full, sslrootcert: " + other, true, true},
		} {
			name := up.name + " " + strings.ReplaceAll(strings.ReplaceAll(tc.upstream, ca, "CA"), other, "OTHER-CA")
			t.Run(name, func(t *testing.T) {
				p := startProxy(t, proxyConfig(t, "", "upstream: {address: "+up.addr+", "+tc.upstream+"}"))
				conn, err := pgx.Connect(ctx, p.dsn())
				if tc.fails || (tc.needTLS && !up.tls) {
					if code := sqlstate(err); code != "08001" {
						t.Fatalf("got %v, want SQLSTATE 08001", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				var ssl bool
				if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
					t.Fatal(err)
				}
				want := up.tls && !strings.Contains(tc.upstream, "disable")
				if ssl != want {
					t.Fatalf("upstream leg TLS = %v, want %v", ssl, want)
				}
			})
		}
	}
}

// rawStartup sends a hand-made startup packet to the proxy and returns the
// first message it answers with.
func rawStartup(t *testing.T, addr string, version uint32, params ...string) []pgproto3.BackendMessage {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := binary.BigEndian.AppendUint32(nil, version)
	for _, p := range params {
		body = append(append(body, p...), 0)
	}
	body = append(body, 0)
	pkt := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	c.Write(append(pkt, body...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	var out []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			return out
		}
		switch m := msg.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			cp := *m
			out = append(out, &cp)
		case *pgproto3.ErrorResponse:
			cp := *m
			return append(out, &cp)
		default:
			return append(out, msg)
		}
	}
}

func TestProtocolVersions(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	t.Run("2.0 is refused", func(t *testing.T) {
		got := rawStartup(t, p.addr, 2<<16, "user", appUser)
		e, ok := got[0].(*pgproto3.ErrorResponse)
		if !ok || e.Code != "0A000" || !strings.Contains(e.Message, "unsupported frontend protocol 2.0") {
			t.Fatalf("got %#v", got)
		}
	})
	t.Run("3.0 with _pq_ options negotiates", func(t *testing.T) {
		got := rawStartup(t, p.addr, 3<<16, "user", appUser, "database", appDB, "_pq_.fancy", "on")
		v, ok := got[0].(*pgproto3.NegotiateProtocolVersion)
		if !ok || v.NewestMinorProtocol != 0 || len(v.UnrecognizedOptions) != 1 || v.UnrecognizedOptions[0] != "_pq_.fancy" {
			t.Fatalf("got %#v", got)
		}
		if _, ok := got[1].(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("after NegotiateProtocolVersion: %#v", got[1])
		}
	})
	t.Run("3.2 from pgx falls back to 3.0", func(t *testing.T) {
		conn := connect(t, ctx, p.dsn("max_protocol_version=3.2"))
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no user is refused", func(t *testing.T) {
		got := rawStartup(t, p.addr, 3<<16, "database", appDB)
		if e, ok := got[0].(*pgproto3.ErrorResponse); !ok || e.Code != "28000" {
			t.Fatalf("got %#v", got)
		}
	})
}

// TestMockSaltSurvivesReload: an unknown role's SCRAM salt must not change
// when the configuration is reloaded (a real role's does not), and two
// Servers given the same secret (instances sharing state_dir) agree on it.
func TestMockSaltSurvivesReload(t *testing.T) {
	unknown := WithLookup(func(context.Context, string) (*auth.Verifier, error) { return nil, nil })
	salt := func(addr string) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fe := pgproto3.NewFrontend(c, c)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "ghost", "database": "x"}})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if msg, err := fe.Receive(); err != nil {
			t.Fatal(err)
		} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("got %T, want AuthenticationSASL", msg)
		}
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=clientnonce")})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
		if !ok {
			t.Fatalf("got %T, want AuthenticationSASLContinue", msg)
		}
		return strings.Split(string(cont.Data), ",")[1] // r=…,s=SALT,i=…
	}
	cfg := proxyConfig(t, "127.0.0.1:1")
	p := startProxy(t, cfg, unknown)
	before := salt(p.addr)
	if again := salt(p.addr); again != before {
		t.Fatalf("salt changed between attempts: %s vs %s", before, again)
	}
	if err := p.srv.Reload(proxyConfig(t, "127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	if after := salt(p.addr); after != before {
		t.Fatalf("salt changed across a reload: %s vs %s", before, after)
	}

	secret := auth.NewMockSecret()
	a := startProxy(t, cfg, unknown, WithMockSecret(secret))
	b := startProxy(t, cfg, unknown, WithMockSecret(secret))
	if salt(a.addr) != salt(b.addr) {
		t.Fatal("two Servers with one secret give an unknown role different salts")
	}
	if salt(a.addr) == before {
		t.Fatal("the salt does not depend on the secret")
	}
}

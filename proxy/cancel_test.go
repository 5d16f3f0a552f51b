package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// cancelModes are the login paths and upstream legs a client's key is
// issued on: both auth modes, a plain and a TLS upstream.
func cancelModes() []struct{ name, auth, upstream string } {
	return []struct{ name, auth, upstream string }{
		{"terminate, TLS upstream", "auth: {mode: terminate}",
			"upstream: {address: " + testCluster.Addr() + ", sslmode: verify-full, sslrootcert: " + testCluster.CA.CertFile + "}"},
		{"relay, plain upstream", "auth: {mode: relay}",
			"upstream: {address: " + testCluster.Addr() + ", sslmode: disable}"},
	}
}

// TestClientSeesBackendPID: the PID in the client's BackendKeyData is the
// upstream backend's, so pg_backend_pid() and pg_stat_activity agree with
// the driver, and the secret is the proxy's own, not the upstream's.
func TestClientSeesBackendPID(t *testing.T) {
	ctx := testCtx(t)
	for _, m := range cancelModes() {
		t.Run(m.name, func(t *testing.T) {
			p := startProxy(t, proxyConfig(t, "", m.auth, m.upstream))
			conn := connect(t, ctx, p.dsn("application_name=pidtest"))
			var backend uint32
			if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
				t.Fatal(err)
			}
			if got := conn.PgConn().PID(); got != backend {
				t.Fatalf("the client's PID is %d, pg_backend_pid() is %d", got, backend)
			}
			var app string
			if err := superConn(t, ctx).QueryRow(ctx, "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
				conn.PgConn().PID()).Scan(&app); err != nil || app != "pidtest" {
				t.Fatalf("pg_stat_activity row of the client's PID: %q, %v", app, err)
			}
			if !strings.Contains(p.logs.String(), fmt.Sprintf(`"backend_pid":%d`, backend)) {
				t.Fatalf("the session's log lines do not name its backend PID:\n%s", p.logs.String())
			}
			e := p.srv.cancels.lookup(backend, conn.PgConn().SecretKey())
			if e == nil {
				t.Fatal("the client's key is not registered")
			}
			if string(e.upSecret) == string(conn.PgConn().SecretKey()) {
				t.Fatal("the client was given the upstream's secret key")
			}
		})
	}
}

// TestTerminateBackendByClientPID is what pgx's own tests do:
// pg_terminate_backend(conn.PID()) from a second connection ends the first,
// and the ended session's key is gone from the registry.
func TestTerminateBackendByClientPID(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	victim := connect(t, ctx, p.dsn())
	other := connect(t, ctx, p.dsn())
	pid, key := victim.PgConn().PID(), victim.PgConn().SecretKey()
	var ok bool
	if err := other.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	_, err := victim.Exec(ctx, "SELECT 1")
	if code := sqlstate(err); code != "57P01" && !victim.IsClosed() {
		t.Fatalf("the terminated session still answers: %v", err)
	}
	waitFor(t, func() bool { return p.srv.cancels.lookup(pid, key) == nil }, "the ended session's key to be removed")
	var one int
	if err := other.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the other session: %v", err)
	}
}

// TestNotifySelfPID: a session that LISTENs and NOTIFYs itself recognises
// its own notification by the PID its driver was given.
func TestNotifySelfPID(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	conn := connect(t, ctx, p.dsn())
	if _, err := conn.Exec(ctx, "LISTEN selfpid"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "NOTIFY selfpid, 'hello'"); err != nil {
		t.Fatal(err)
	}
	n := awaitNotification(t, ctx, conn)
	if n.PID != conn.PgConn().PID() || n.Payload != "hello" {
		t.Fatalf("notification from PID %d (%q); the session's PID is %d", n.PID, n.Payload, conn.PgConn().PID())
	}
}

// sendCancel sends a CancelRequest built by hand (16 bytes: length, code
// 80877102, process ID, secret) to addr and waits for the close.
func sendCancel(t *testing.T, addr string, pid uint32, secret []byte) {
	t.Helper()
	var msg [16]byte
	binary.BigEndian.PutUint32(msg[0:], 16)
	binary.BigEndian.PutUint32(msg[4:], cancelRequestCode)
	binary.BigEndian.PutUint32(msg[8:], pid)
	copy(msg[12:], secret)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(msg[:]); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := c.Read(make([]byte, 1)); n != 0 {
		t.Fatal("the proxy answered a CancelRequest")
	}
}

// TestCancelRequestByHand: with the backend's PID (as pg_backend_pid()
// reports it), a wrong secret, the upstream's own secret, or another
// proxy instance cancel nothing; the issued secret cancels.
func TestCancelRequestByHand(t *testing.T) {
	ctx := testCtx(t)
	for _, m := range cancelModes() {
		t.Run(m.name, func(t *testing.T) {
			p := startProxy(t, proxyConfig(t, "", m.auth, m.upstream))
			peer := startProxy(t, proxyConfig(t, "", m.auth, m.upstream)) // another instance, same database
			conn := connect(t, ctx, p.dsn())
			var pid uint32
			if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			key := conn.PgConn().SecretKey()
			wrong := append([]byte(nil), key...)
			wrong[3] ^= 0x01
			up := p.srv.cancels.lookup(pid, key)
			if up == nil {
				t.Fatal("no key registered under pg_backend_pid()")
			}

			done := make(chan error, 1)
			go func() {
				_, err := conn.Exec(ctx, "SELECT pg_sleep(1.5)")
				done <- err
			}()
			time.Sleep(200 * time.Millisecond)
			sendCancel(t, p.addr, pid, wrong)
			sendCancel(t, p.addr, pid, up.upSecret) // the upstream's secret is not the client's
			sendCancel(t, peer.addr, pid, key)      // the instance that did not serve the session
			if err := <-done; err != nil {
				t.Fatalf("a wrong cancel key cancelled the query: %v", err)
			}

			go func() {
				_, err := conn.Exec(ctx, "SELECT pg_sleep(10)")
				done <- err
			}()
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			sendCancel(t, p.addr, pid, key)
			if err := <-done; sqlstate(err) != "57014" {
				t.Fatalf("the issued key did not cancel: %v", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("cancel took %v", d)
			}
		})
	}
}

// TestCancelByContextThroughProxy: pgx's CancelRequest on context
// cancellation of a long pg_sleep still cancels, in every login mode.
func TestCancelByContextThroughProxy(t *testing.T) {
	ctx := testCtx(t)
	for _, m := range cancelModes() {
		t.Run(m.name, func(t *testing.T) {
			p := startProxy(t, proxyConfig(t, "", m.auth, m.upstream))
			conn := connect(t, ctx, p.dsn(), testenv.CancelOnExpiry)
			sleepCanceled(t, ctx, conn, 300*time.Millisecond)
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatalf("the session after the cancel: %v", err)
			}
		})
	}
}

// sleepCanceled runs pg_sleep(10) on conn under a timeout of after and
// fails t unless the query is canceled (57014) within 3 s.
func sleepCanceled(t *testing.T, ctx context.Context, conn *pgx.Conn, after time.Duration) {
	t.Helper()
	qctx, cancel := context.WithTimeout(ctx, after)
	defer cancel()
	start := time.Now()
	if _, err := conn.Exec(qctx, "SELECT pg_sleep(10)"); sqlstate(err) != "57014" {
		t.Fatalf("got %v, want SQLSTATE 57014", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cancel took %v", d)
	}
}

// TestCancelRegistrySamePID: a backend PID reused after one session ended
// (or the same PID on another upstream after a reload) keeps each session's
// entry apart: the secret selects it, and each session removes only its own.
func TestCancelRegistrySamePID(t *testing.T) {
	var r cancelRegistry
	old := newCancelEntry(4242, []byte{1, 1, 1, 1}, nil)
	cur := newCancelEntry(4242, []byte{2, 2, 2, 2}, nil)
	r.register(old)
	r.register(cur) // before old's session has unregistered
	if r.lookup(4242, old.secret[:]) != old || r.lookup(4242, cur.secret[:]) != cur {
		t.Fatal("entries under one PID are not told apart by their secret")
	}
	r.unregister(old)
	if r.lookup(4242, old.secret[:]) != nil {
		t.Fatal("an unregistered key still cancels")
	}
	if r.lookup(4242, cur.secret[:]) != cur {
		t.Fatal("unregistering the old session removed the new one's key")
	}
	if r.lookup(4242, nil) != nil || r.lookup(4242, cur.secret[:3]) != nil || r.lookup(4243, cur.secret[:]) != nil {
		t.Fatal("a short secret or another PID matched")
	}
	r.unregister(cur)
	if len(r.m) != 0 {
		t.Fatalf("registry not empty: %v", r.m)
	}
}

package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// The PID a client is given is its upstream backend's, through the real
// binary with the phi: section, client TLS and a verify-full upstream:
// pgx and libpq (psycopg 3) agree with pg_backend_pid(), a session
// recognises its own NOTIFY, pg_terminate_backend(conn.PID()) ends the
// session, and cancels still work.

func TestBackendPIDThroughPHIProxy(t *testing.T) {
	p := startPHIProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := appDSN(p.addr(), phiDB, "sslmode=require")
	conn := testenv.Connect(t, ctx, dsn, testenv.CancelOnExpiry)

	var backend uint32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	if conn.PgConn().PID() != backend {
		t.Fatalf("pgx PID() = %d, pg_backend_pid() = %d", conn.PgConn().PID(), backend)
	}

	// Its own notification, after a statement on a PHI relation.
	if _, err := conn.Exec(ctx, "INSERT INTO patients (name, ssn) VALUES ('pid', '111-22-3333')"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN pidtest"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "NOTIFY pidtest, 'self'"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := conn.WaitForNotification(wctx)
	wcancel()
	if err != nil || n.PID != conn.PgConn().PID() {
		t.Fatalf("notification %+v (%v); the session's PID is %d", n, err, conn.PgConn().PID())
	}

	// pgx cancels a long statement on context cancellation.
	qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = conn.Exec(qctx, "SELECT pg_sleep(10)")
	qcancel()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Fatalf("got %v, want SQLSTATE 57014", err)
	}

	// pg_terminate_backend(conn.PID()) from another session ends this one.
	other := testenv.Connect(t, ctx, dsn, nil)
	var ok bool
	if err := other.QueryRow(ctx, "SELECT pg_terminate_backend($1)", conn.PgConn().PID()).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend = %v, %v", ok, err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the terminated session still answers")
	}
}

// libpqPIDScript checks, with psycopg 3 (libpq), that the connection's
// backend_pid is pg_backend_pid(), that its own NOTIFY carries it, and that
// conn.cancel() (PQcancel with that key) cancels a long statement.
const libpqPIDScript = `
import sys, threading, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
(pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
print("pid matches:", conn.info.backend_pid == pid)
got = []
conn.add_notify_handler(got.append)
conn.execute("LISTEN pidtest")
conn.execute("NOTIFY pidtest, 'self'")
conn.execute("SELECT 1")
print("own notification:", [n.pid == conn.info.backend_pid for n in got])
threading.Timer(0.3, conn.cancel).start()
try:
    conn.execute("SELECT pg_sleep(10)")
    print("cancel: not cancelled")
except psycopg.errors.QueryCanceled:
    print("cancel: 57014")
`

func TestBackendPIDWithLibpq(t *testing.T) {
	p := startPHIProxy(t)
	out := runCmd(t, pythonBin, "-c", libpqPIDScript, appDSN(p.addr(), phiDB))
	want := "pid matches: True\nown notification: [True]\ncancel: 57014\n"
	if out != want {
		t.Fatalf("psycopg 3 through the proxy:\n%s\nwant:\n%s", out, want)
	}
	if !strings.Contains(p.out.String(), "cancel request forwarded") {
		t.Fatalf("the proxy did not forward the cancel:\n%s", p.out.String())
	}
}

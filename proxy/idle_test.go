package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

const idleShort = 300 * time.Millisecond

// idleProxy is a proxy with automatic logoff after idleShort for the
// settings named ("idle_session_timeout", "idle_in_transaction_timeout").
func idleProxy(t *testing.T, settings []string, opts ...Option) *testProxy {
	t.Helper()
	var kv []string
	for _, s := range settings {
		kv = append(kv, s+": 300ms")
	}
	return startProxy(t, proxyConfig(t, testCluster.Addr(), "limits: {"+strings.Join(kv, ", ")+"}"), opts...)
}

func pgConnect(t *testing.T, ctx context.Context, dsn string) *pgconn.PgConn {
	t.Helper()
	pc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}

func execOK(t *testing.T, ctx context.Context, pc *pgconn.PgConn, sql string) []*pgconn.Result {
	t.Helper()
	res, err := pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return res
}

// awaitLogoff waits, without sending anything, for the FATAL that ends an
// idle session and returns how long that took.
func awaitLogoff(t *testing.T, ctx context.Context, pc *pgconn.PgConn, code, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := pc.ReceiveMessage(rctx)
	d := time.Since(start)
	// pgconn hands the FATAL over as a message or, when it arrived during
	// an earlier read, as that read's error.
	var pe *pgconn.PgError
	switch er, _ := m.(*pgproto3.ErrorResponse); {
	case er != nil:
		pe = pgconn.ErrorResponseToPgError(er)
	case !errors.As(err, &pe):
		t.Fatalf("no automatic logoff within 5s: %v, %#v", err, m)
	}
	if pe.Code != code || pe.Severity != "FATAL" || pe.Message != msg {
		t.Fatalf("got %v, want FATAL %s %q", pe, code, msg)
	}
	// Nothing follows: the proxy closed the connection.
	if m, err := pc.ReceiveMessage(rctx); err == nil {
		t.Fatalf("after the FATAL: %#v", m)
	}
	return d
}

const (
	msgIdleSession = "terminating connection due to idle-session timeout"
	msgIdleInTx    = "terminating connection due to idle-in-transaction timeout"
)

// endRecorder records the error its session ended with.
type endRecorder struct {
	mu  sync.Mutex
	err error
	end chan struct{}
}

func (r *endRecorder) Intercepts() (MessageSet, MessageSet) { return MessageSet{}, MessageSet{} }
func (r *endRecorder) ClientMessage(pgproto3.FrontendMessage, *Out) error {
	return nil
}
func (r *endRecorder) ServerMessage(pgproto3.BackendMessage, *Out) error { return nil }
func (r *endRecorder) SessionEnd(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
	close(r.end)
}

func TestIdleSessionTimeout(t *testing.T) {
	ctx := testCtx(t)
	rec := make(chan *endRecorder, 1)
	p := idleProxy(t, []string{"idle_session_timeout"}, WithInterceptor(func(*SessionInfo) Interceptor {
		r := &endRecorder{end: make(chan struct{})}
		rec <- r
		return r
	}))
	pc := pgConnect(t, ctx, p.dsn("application_name=idle_session_test"))
	r := <-rec
	execOK(t, ctx, pc, "SELECT 1")
	if d := awaitLogoff(t, ctx, pc, "57P05", msgIdleSession); d < idleShort/2 {
		t.Fatalf("logged off after %v, timeout %v", d, idleShort)
	}
	// The session end path saw the error (audit hangs there), and the log
	// says what happened.
	select {
	case <-r.end:
	case <-time.After(5 * time.Second):
		t.Fatal("SessionEnd was not called")
	}
	r.mu.Lock()
	if pe := pgerr.As(r.err); pe == nil || pe.Code != pgerr.IdleSessionTimeout {
		t.Errorf("SessionEnd(%v), want 57P05", r.err)
	}
	r.mu.Unlock()
	// "session closed" is logged after SessionEnd returns.
	logged := func(l string) bool {
		return strings.Contains(l, `"msg":"automatic logoff"`) && strings.Contains(l, `"sqlstate":"57P05","state":"Idle"`) &&
			strings.Contains(l, `"state":"Idle","sqlstate":"57P05"`)
	}
	if !p.logs.Await(5*time.Second, logged) {
		t.Errorf("no automatic logoff in the log:\n%s", p.logs.String())
	}
	waitBackendsGone(t, ctx, "idle_session_test")

	// Inside a transaction block the idle-session timeout does not apply
	// (PostgreSQL's idle_in_transaction_session_timeout does, unset here).
	pc = pgConnect(t, ctx, p.dsn())
	<-rec
	execOK(t, ctx, pc, "BEGIN")
	time.Sleep(3 * idleShort)
	execOK(t, ctx, pc, "COMMIT")
	awaitLogoff(t, ctx, pc, "57P05", msgIdleSession)
}

// waitBackendsGone waits until no upstream backend with application_name
// app is left.
func waitBackendsGone(t *testing.T, ctx context.Context, app string) {
	t.Helper()
	super := superConn(t, ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d upstream backend(s) of %s still there", n, app)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestIdleInTransactionTimeout(t *testing.T) {
	ctx := testCtx(t)
	direct := scratchTable(t, ctx, "idle_logoff")
	// Only the in-transaction timeout is set: outside a transaction the
	// session may idle.
	p := idleProxy(t, []string{"idle_in_transaction_timeout"})
	for _, tc := range []struct{ name, fail string }{
		{"in a transaction", ""},
		{"in a failed transaction", "SELECT 1/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := "idle_tx_test" + strings.ReplaceAll(tc.name, " ", "_")
			pc := pgConnect(t, ctx, p.dsn("application_name="+app))
			execOK(t, ctx, pc, "SELECT 1")
			time.Sleep(2 * idleShort)
			execOK(t, ctx, pc, "BEGIN; INSERT INTO idle_logoff VALUES ('"+app+"')")
			if tc.fail != "" {
				if _, err := pc.Exec(ctx, tc.fail).ReadAll(); err == nil {
					t.Fatal("expected an error")
				}
			}
			awaitLogoff(t, ctx, pc, "25P03", msgIdleInTx)
			waitBackendsGone(t, ctx, app)
			var n int
			if err := direct.QueryRow(ctx, "SELECT count(*) FROM idle_logoff WHERE v = $1", app).Scan(&n); err != nil || n != 0 {
				t.Fatalf("uncommitted insert: %d rows, %v; want it rolled back", n, err)
			}
		})
	}
}

func TestIdleTimeoutSparesBusySessions(t *testing.T) {
	ctx := testCtx(t)
	scratchTable(t, ctx, "idle_copy")
	p := idleProxy(t, []string{"idle_session_timeout", "idle_in_transaction_timeout"})
	// Each case keeps the session busy for longer than the timeout, then
	// lets it idle: it must survive the first part and not the second.
	for _, tc := range []struct {
		name string
		busy func(t *testing.T, pc *pgconn.PgConn)
	}{
		{"a client that keeps sending", func(t *testing.T, pc *pgconn.PgConn) {
			for range 8 {
				time.Sleep(idleShort / 2)
				execOK(t, ctx, pc, "SELECT 1")
			}
		}},
		{"a long statement", func(t *testing.T, pc *pgconn.PgConn) {
			execOK(t, ctx, pc, "SELECT pg_sleep(1)")
			execOK(t, ctx, pc, "BEGIN; SELECT pg_sleep(1)")
			execOK(t, ctx, pc, "COMMIT")
		}},
		{"an extended-protocol statement", func(t *testing.T, pc *pgconn.PgConn) {
			if _, err := pc.ExecParams(ctx, "SELECT pg_sleep($1)", [][]byte{[]byte("1")}, nil, nil, nil).Close(); err != nil {
				t.Fatal(err)
			}
		}},
		{"an extended-protocol batch not yet synced", func(t *testing.T, pc *pgconn.PgConn) {
			// No ReadyForQuery is owed before the Sync: PostgreSQL does
			// not count the wait as idle.
			fe := pc.Frontend()
			fe.Send(&pgproto3.Parse{Query: "SELECT 1"})
			fe.Send(&pgproto3.Flush{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * idleShort)
			for _, want := range []string{"*pgproto3.ParseComplete", "*pgproto3.ReadyForQuery"} {
				m, err := pc.ReceiveMessage(ctx)
				if err != nil || fmt.Sprintf("%T", m) != want {
					t.Fatalf("got %T, %v; want %s", m, err, want)
				}
				if want == "*pgproto3.ParseComplete" {
					fe.Send(&pgproto3.Sync{})
					if err := fe.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}},
		{"COPY FROM STDIN waiting for data", func(t *testing.T, pc *pgconn.PgConn) {
			pr, pw := io.Pipe()
			go func() {
				time.Sleep(3 * idleShort)
				_, _ = pw.Write([]byte("late\n"))
				time.Sleep(3 * idleShort)
				_, _ = pw.Write([]byte("later\n"))
				pw.Close()
			}()
			tag, err := pc.CopyFrom(ctx, pr, "COPY idle_copy FROM STDIN")
			if err != nil || tag.RowsAffected() != 2 {
				t.Fatalf("COPY: %v, %v", tag, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := pgConnect(t, ctx, p.dsn())
			tc.busy(t, pc)
			execOK(t, ctx, pc, "SELECT 1") // still there
			awaitLogoff(t, ctx, pc, "57P05", msgIdleSession)
		})
	}
}

func TestIdleTimeoutReload(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	pc := pgConnect(t, ctx, p.dsn())
	execOK(t, ctx, pc, "SELECT 1")
	time.Sleep(2 * idleShort) // off by default
	// A reload applies to a session already open from its next idle
	// period.
	if err := p.srv.Reload(proxyConfig(t, testCluster.Addr(), "limits: {idle_session_timeout: 300ms}")); err != nil {
		t.Fatal(err)
	}
	execOK(t, ctx, pc, "SELECT 1")
	awaitLogoff(t, ctx, pc, "57P05", msgIdleSession)
}

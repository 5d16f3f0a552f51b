package testenv

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// Context returns a context that times out after d and is cancelled when
// the test ends.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Connect connects to dsn, with configure (when not nil) applied to the
// parsed config first, and closes the connection when the test ends.
func Connect(t testing.TB, ctx context.Context, dsn string, configure func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if configure != nil {
		configure(cc)
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Server is what Serve runs; proxy.Server is one.
type Server interface {
	Serve(ctx context.Context, ln net.Listener) error
	Close() error
}

// Serve runs srv on a free loopback port and returns the port's address.
// When the test ends it closes srv, waits for Serve to return and passes
// what Serve returned to ended (when not nil).
func Serve(t testing.TB, srv Server, ended func(error)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		srv.Close()
		err := <-done
		if ended != nil {
			ended(err)
		}
	})
	return ln.Addr().String()
}

// CancelOnExpiry configures connections to cancel a query on context
// expiry with a CancelRequest, as libpq-based clients do (pgx's default
// is to close the connection): Connect(t, ctx, dsn, CancelOnExpiry).
func CancelOnExpiry(cc *pgx.ConnConfig) {
	cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
	}
}

// Eventually polls cond every interval until it holds and reports whether
// it did within d; cond runs at least once.
func Eventually(d, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}

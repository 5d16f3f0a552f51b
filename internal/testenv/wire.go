package testenv

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// AcceptLoop listens on a free loopback port and runs handle, in a
// goroutine of its own, on every connection accepted; a failed accept
// (EMFILE) is retried until the listener closes. When the test ends
// it closes the listener, calls stop (when not nil: what ends the running
// handlers, such as closing their connections) and waits for every
// handler to return.
func AcceptLoop(t testing.TB, stop func(), handle func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		if stop != nil {
			stop()
		}
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				// Out of descriptors (a test that limits them) and the
				// like: as net/http, wait and accept again.
				time.Sleep(5 * time.Millisecond)
				continue
			}
			wg.Go(func() { handle(c) })
		}
	})
	return ln
}

// ScriptedServer runs a fake server for the test's lifetime, for answers
// a real PostgreSQL never gives (malformed, hostile or arbitrary ones):
// each connection has its StartupMessage read and is then handed to
// script, and closed when script returns (or after ten seconds). It
// returns the server's address.
func ScriptedServer(t testing.TB, script func(c net.Conn, be *pgproto3.Backend)) string {
	t.Helper()
	ln := AcceptLoop(t, nil, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		be := pgproto3.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		script(c, be)
	})
	return ln.Addr().String()
}

// Hijack logs in to dsn and takes the connection over, for a test that
// writes the protocol by hand: the connection has a deadline d from now
// and closes when the test ends.
func Hijack(t testing.TB, ctx context.Context, dsn string, d time.Duration) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	pc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	_ = hc.Conn.SetDeadline(time.Now().Add(d))
	return hc.Conn, hc.Frontend
}

// Exchange sends msgs (none: it only reads) through fe, then passes each
// message the server answers with to each (a message is valid only during
// its call), up to and including ReadyForQuery. It fails t if the
// connection fails first.
func Exchange(t testing.TB, fe *pgproto3.Frontend, each func(pgproto3.BackendMessage), msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		each(msg)
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return
		}
	}
}

package testenv

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A scripted server that logs in any user and answers every Query with
// its text as an error: Hijack logs in to it and hands over a
// connection the test speaks the protocol on, and Exchange reads each
// answer to its ReadyForQuery.
func TestScriptedServerHijackExchange(t *testing.T) {
	var logins, queries atomic.Int32
	addr := ScriptedServer(t, func(c net.Conn, be *pgproto3.Backend) {
		logins.Add(1)
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return
		}
		for {
			msg, err := be.Receive()
			if err != nil {
				return
			}
			if q, ok := msg.(*pgproto3.Query); ok {
				queries.Add(1)
				be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42000", Message: q.String})
				be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
				if be.Flush() != nil {
					return
				}
			}
		}
	})
	ctx := Context(t, 30*time.Second)
	conn, fe := Hijack(t, ctx, "postgres://someone@"+addr+"/db?sslmode=disable", 10*time.Second)
	var got []string
	onError := func(msg pgproto3.BackendMessage) {
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			got = append(got, e.Code+" "+e.Message)
		}
	}
	// A query written by hand, then one Exchange sends.
	q, _ := (&pgproto3.Query{String: "by hand"}).Encode(nil)
	if _, err := conn.Write(q); err != nil {
		t.Fatal(err)
	}
	Exchange(t, fe, onError)
	Exchange(t, fe, onError, &pgproto3.Query{String: "sent"})
	if strings.Join(got, "; ") != "42000 by hand; 42000 sent" || logins.Load() != 1 || queries.Load() != 2 {
		t.Fatalf("answered %q after %d logins and %d queries", got, logins.Load(), queries.Load())
	}
}

// AcceptLoop hands every connection to its handler, and when the test
// ends calls stop and returns only after every handler has.
func TestAcceptLoopWaitsForHandlers(t *testing.T) {
	var handled, returned atomic.Int32
	t.Run("loop", func(t *testing.T) {
		release := make(chan struct{})
		ln := AcceptLoop(t, func() { close(release) }, func(c net.Conn) {
			defer c.Close()
			handled.Add(1)
			<-release
			returned.Add(1)
		})
		for range 3 {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		if !Eventually(10*time.Second, time.Millisecond, func() bool { return handled.Load() == 3 }) {
			t.Fatalf("%d of 3 connections handled", handled.Load())
		}
	})
	if n := returned.Load(); n != 3 {
		t.Fatalf("the loop's cleanup returned before its handlers: %d of 3 returned", n)
	}
}

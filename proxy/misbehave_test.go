package proxy

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"iter"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/proxy/auth"
)

// A misbehaving upstream (a fake server that speaks just enough of the
// protocol) must end at most the session it serves, never the process.

// errorBody is an ErrorResponse body with the given fields (a field type
// byte and its value each), without a C field unless one is given.
func errorBody(fields ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(fields); i += 2 {
		b = append(append(append(b, fields[i][0]), fields[i+1]...), 0)
	}
	return append(b, 0)
}

// trustedSession answers a login as a trusting server does, then yields
// each message the client sends (valid until the next) until the
// connection ends.
func trustedSession(c net.Conn, be *pgproto3.Backend) iter.Seq[pgproto3.FrontendMessage] {
	return func(yield func(pgproto3.FrontendMessage) bool) {
		var out []byte
		out = append(out, frame('R', []byte{0, 0, 0, 0})...)
		out = append(out, frame('K', []byte{0, 0, 0, 7, 1, 2, 3, 4})...)
		out = append(out, frame('Z', []byte{'I'})...)
		if _, err := c.Write(out); err != nil {
			return
		}
		for {
			msg, err := be.Receive()
			if err != nil || !yield(msg) {
				return
			}
		}
	}
}

// logLines counts the lines of logs that contain every one of want.
func logLines(logs string, want ...string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if all {
			n++
		}
	}
	return n
}

func md5Secret(user, password string) string {
	h := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(h[:])
}

func TestUpstreamErrorWithoutSQLSTATEDuringLogin(t *testing.T) {
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		body []byte
		want string // the session's SQLSTATE in the proxy's log
		// modes: in mode terminate pgproto3 decodes the upstream's
		// answer to the login and refuses malformed ones itself.
		modes []string
	}{
		{"no C field", errorBody("S", "FATAL", "V", "FATAL", "M", "go away"), "XX000", []string{"relay", "terminate"}},
		{"a C field that is no SQLSTATE", errorBody("S", "FATAL", "C", "oops", "M", "go away"), "XX000", []string{"relay", "terminate"}},
		{"fields without terminator", []byte("SFATAL"), "08P01", []string{"relay"}},
		// pgproto3 fails to decode it: the login fails as with a lost
		// upstream (logged, which it was not before).
		{"fields without terminator", []byte("SFATAL"), "08006", []string{"terminate"}},
	} {
		up := testenv.ScriptedServer(t, func(c net.Conn, be *pgproto3.Backend) {
			_, _ = c.Write(frame('E', tc.body))
		})
		verifier := &auth.Verifier{Role: appUser, Secret: md5Secret(appUser, appPassword), CanLogin: true}
		for _, mode := range tc.modes {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				p := startProxy(t, proxyConfig(t, up, "auth: {mode: "+mode+"}"),
					WithLookup(func(context.Context, string) (*auth.Verifier, error) { return verifier, nil }))
				// Twice: the first attempt must have left the proxy serving.
				for range 2 {
					if _, err := pgconn.Connect(ctx, p.dsn()); err == nil {
						t.Fatal("the login succeeded")
					}
				}
				waitFor(t, func() bool {
					return logLines(p.logs.String(), `"connection failed"`, `login`, `"sqlstate":"`+tc.want+`"`) == 2
				}, "the failures logged with "+tc.want)
			})
		}
	}
}

func TestUpstreamErrorWithoutSQLSTATEAfterLogin(t *testing.T) {
	ctx := testCtx(t)
	up := testenv.ScriptedServer(t, func(c net.Conn, be *pgproto3.Backend) {
		first := true
		for msg := range trustedSession(c, be) {
			if _, ok := msg.(*pgproto3.Query); !ok {
				continue
			}
			if first {
				_, _ = c.Write(append(frame('E', errorBody("S", "ERROR", "M", "no code")), frame('Z', []byte{'I'})...))
				first = false
				continue
			}
			_, _ = c.Write(frame('E', errorBody("S", "FATAL", "V", "FATAL", "M", "no code either")))
			return
		}
	})
	for _, hooked := range []bool{false, true} {
		t.Run(map[bool]string{false: "pass-through", true: "interceptor decodes errors"}[hooked], func(t *testing.T) {
			var opts []Option
			if hooked {
				opts = append(opts, WithInterceptor(func(*SessionInfo) Interceptor { return errorWatcher{} }))
			}
			p := startProxy(t, proxyConfig(t, up, "auth: {mode: relay}"), opts...)
			for range 2 {
				conn, err := pgconn.Connect(ctx, p.dsn())
				if err != nil {
					t.Fatal(err)
				}
				err = conn.Exec(ctx, "SELECT 1").Close()
				if pe, ok := err.(*pgconn.PgError); !ok || pe.Severity != "ERROR" || pe.Message != "no code" {
					t.Fatalf("first query: %v", err)
				}
				// The session survives the error; the FATAL one ends it.
				err = conn.Exec(ctx, "SELECT 2").Close()
				if pe, ok := err.(*pgconn.PgError); !ok || pe.Severity != "FATAL" {
					t.Fatalf("second query: %v", err)
				}
				conn.Close(ctx)
			}
			waitFor(t, func() bool {
				return logLines(p.logs.String(), `"upstream ended the session"`, `"sqlstate":"XX000"`) == 2
			}, "the upstream's FATAL logged as XX000")
		})
	}
}

// errorWatcher selects ErrorResponses, so that they are decoded, and
// forwards them.
type errorWatcher struct{}

func (errorWatcher) Intercepts() (MessageSet, MessageSet) {
	return MessageSet{}, Messages(MsgErrorResponse)
}
func (errorWatcher) ClientMessage(msg pgproto3.FrontendMessage, out *Out) error {
	return out.Forward(msg)
}
func (errorWatcher) ServerMessage(msg pgproto3.BackendMessage, out *Out) error {
	return out.Forward(msg)
}
func (errorWatcher) SessionEnd(error) {}

// panicky panics where the test asks it to: on a Query that names a
// trigger (client→server goroutine), on a DataRow that holds one
// (server→client goroutine), or when its session ends. The panic values
// carry a canary that must not reach the log.
type panicky struct{ onEnd bool }

const panicCanary = "123-45-6789"

func (panicky) Intercepts() (MessageSet, MessageSet) {
	return Messages(MsgQuery), Messages(MsgDataRow)
}

func (panicky) ClientMessage(msg pgproto3.FrontendMessage, out *Out) error {
	if q := msg.(*pgproto3.Query); strings.Contains(q.String, "panic in client") {
		panic("value " + panicCanary)
	}
	return out.Forward(msg)
}

func (panicky) ServerMessage(msg pgproto3.BackendMessage, out *Out) error {
	for _, v := range msg.(*pgproto3.DataRow).Values {
		if string(v) == "panic in server" {
			panic(errors.New("value " + panicCanary))
		}
	}
	return out.Forward(msg)
}

func (p panicky) SessionEnd(error) {
	if p.onEnd {
		var row [][]byte
		_ = row[len(panicCanary)] // a runtime error
	}
}

// TestPanicEndsOnlyItsSession: a panic in any of a session's goroutines
// ends that session with FATAL XX000 and is logged (type and stack, not
// its text); another session carries on, and so does the proxy.
func TestPanicEndsOnlyItsSession(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()), WithInterceptor(func(si *SessionInfo) Interceptor {
		switch si.ApplicationName {
		case "panic-factory":
			panic("value " + panicCanary)
		case "panic-ended":
			return panicky{onEnd: true}
		}
		return panicky{}
	}))
	other := connect(t, ctx, p.dsn())
	stillWorks := func(t *testing.T) {
		t.Helper()
		var n int
		if err := other.QueryRow(ctx, "SELECT 41 + 1", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 42 {
			t.Fatalf("the other session: %d, %v", n, err)
		}
	}
	stillWorks(t)
	for _, tc := range []struct{ name, app, query string }{
		{"in the client→server goroutine", "", "SELECT 'panic in client'"},
		{"in the server→client goroutine", "", "SELECT 'panic in ' || 'server'"},
		{"while the session starts", "panic-factory", "SELECT 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := logLines(p.logs.String(), "phiproxy bug")
			conn, err := pgconn.Connect(ctx, p.dsn("application_name="+tc.app))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, tc.query).ReadAll()
			if pe, ok := err.(*pgconn.PgError); !ok || pe.Code != "XX000" || pe.Severity != "FATAL" {
				t.Fatalf("got %v, want FATAL XX000", err)
			}
			if logLines(p.logs.String(), "phiproxy bug", `"stack":"goroutine`) != before+1 {
				t.Fatalf("the panic was not logged with its stack:\n%s", p.logs.String())
			}
			stillWorks(t)
		})
	}
	t.Run("in the Interceptor's end", func(t *testing.T) {
		conn := connect(t, ctx, p.dsn("application_name=panic-ended"))
		conn.Close(ctx)
		waitFor(t, func() bool {
			return logLines(p.logs.String(), "phiproxy bug", `"panic":"runtime error: index out of range [11] with length 0"`) == 1
		},
			"the panic in Ended to be logged")
		stillWorks(t)
	})
	if strings.Contains(p.logs.String(), panicCanary) {
		t.Fatalf("a panic's text reached the log:\n%s", p.logs.String())
	}
	for _, want := range []string{`"panic":"string"`, `"panic":"*errors.errorString"`} {
		if !strings.Contains(p.logs.String(), want) {
			t.Errorf("the log does not name the panic's type %s", want)
		}
	}
}

// TestPanicDuringLogin: a panic in the login (here the verifier lookup)
// ends that connection with FATAL XX000 and the proxy keeps serving.
func TestPanicDuringLogin(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()), WithLookup(func(_ context.Context, role string) (*auth.Verifier, error) {
		if role == "boom" {
			panic("value " + panicCanary)
		}
		return nil, nil // no such role
	}))
	_, err := pgconn.Connect(ctx, testenv.AppDSN(p.addr, "user=boom"))
	if code := sqlstate(err); code != "XX000" {
		t.Fatalf("got %v, want XX000", err)
	}
	_, err = pgconn.Connect(ctx, p.dsn())
	if code := sqlstate(err); code != "28P01" {
		t.Fatalf("after the panic: %v, want the proxy's 28P01 for an unknown role", err)
	}
	if strings.Contains(p.logs.String(), panicCanary) || logLines(p.logs.String(), "phiproxy bug", `"panic":"string"`) != 1 {
		t.Fatalf("log:\n%s", p.logs.String())
	}
}

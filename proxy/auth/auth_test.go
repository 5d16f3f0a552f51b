package auth

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgerr"
)

// credsFor builds Credentials the way a client's authentication would,
// from the role's verifier in pg_authid and its password.
func credsFor(t *testing.T, role, password string) *Credentials {
	t.Helper()
	v, err := catalogLookup(t, functionQuery)(context.Background(), role)
	if err != nil || v == nil {
		t.Fatalf("lookup %s: %v %v", role, v, err)
	}
	if isMD5Secret(v.Secret) {
		return &Credentials{role: role, md5: v.Secret}
	}
	sec, ok := parseSCRAMSecret(v.Secret)
	if !ok {
		t.Fatalf("%s has no SCRAM verifier", role)
	}
	sp, err := pbkdf2.Key(sha256.New, password, sec.salt, sec.iterations, keyLen)
	if err != nil {
		t.Fatal(err)
	}
	ck := hmacSHA256(sp, "Client Key")
	return &Credentials{role: role, scram: &scramKeys{clientKey: ck, storedKey: sec.storedKey, serverKey: sec.serverKey, salt: sec.salt, iterations: sec.iterations}}
}

// loginUpstream runs Login on a fresh upstream connection and, when it
// succeeds, reads the session to ReadyForQuery and asks current_user.
func loginUpstream(t *testing.T, creds *Credentials, useTLS bool) (sent []byte, user string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, state, err := dialUpstream(ctx, useTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	rec := &writeRecorder{Conn: conn}
	fe := pgproto3.NewFrontend(conn, rec)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": creds.Role(), "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := creds.Login(ctx, fe, state); err != nil {
		return rec.buf, "", err
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			return rec.buf, "", err
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			return rec.buf, "", upstreamError(e)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	testenv.Exchange(t, fe, func(msg pgproto3.BackendMessage) {
		if m, ok := msg.(*pgproto3.DataRow); ok {
			user = string(m.Values[0])
		}
	}, &pgproto3.Query{String: "SELECT current_user"})
	return rec.buf, user, nil
}

func TestLoginUpstreamWithRecoveredKeys(t *testing.T) {
	plus := []byte("SCRAM-SHA-256-PLUS\x00")
	for _, tc := range []struct {
		name     string
		role     string
		tls      bool
		wantPlus bool
	}{
		{"SCRAM over TLS binds to the server certificate with -PLUS", "alice", true, true},
		{"SCRAM without TLS uses SCRAM-SHA-256", "alice", false, false},
		{"md5 answers with the stored hash over TLS", "md5user", true, false},
		{"md5 answers with the stored hash without TLS", "md5user", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent, user, err := loginUpstream(t, credsFor(t, tc.role, passwords[tc.role]), tc.tls)
			if err != nil {
				t.Fatal(err)
			}
			if user != tc.role {
				t.Fatalf("current_user = %q, want %q", user, tc.role)
			}
			if got := bytes.Contains(sent, plus); got != tc.wantPlus {
				t.Fatalf("SCRAM-SHA-256-PLUS used: %v, want %v", got, tc.wantPlus)
			}
			if bytes.Contains(sent, []byte(passwords[tc.role])) {
				t.Fatal("the password went upstream")
			}
		})
	}
	t.Run("a wrong ClientKey gets PostgreSQL's own error, unchanged", func(t *testing.T) {
		creds := credsFor(t, "alice", "not-the-password")
		_, _, err := loginUpstream(t, creds, true)
		var ue *UpstreamError
		if !errors.As(err, &ue) {
			t.Fatalf("err = %v, want *UpstreamError", err)
		}
		if ue.Response.Code != "28P01" || ue.Response.Severity != "FATAL" || ue.Response.Message != `password authentication failed for user "alice"` || ue.Response.Routine == "" {
			t.Fatalf("got %+v", ue.Response)
		}
	})
	t.Run("md5 credentials cannot answer a SCRAM request", func(t *testing.T) {
		_, _, err := loginUpstream(t, credsFor(t, "md5only", passwords["md5only"]), false)
		if pe := pgerr.As(err); pe == nil || pe.Code != pgerr.InvalidAuthorizationSpec {
			t.Fatalf("err = %v, want 28000", err)
		}
	})
	t.Run("NOLOGIN is refused upstream with 28000 after the password check", func(t *testing.T) {
		_, _, err := loginUpstream(t, credsFor(t, "nologin_user", passwords["nologin_user"]), true)
		var ue *UpstreamError
		if !errors.As(err, &ue) || ue.Response.Code != "28000" || ue.Response.Message != `role "nologin_user" is not permitted to log in` {
			t.Fatalf("err = %v", err)
		}
	})
}

// outcome is what a client saw, with ports replaced so that direct and
// proxied attempts compare.
func normalize(s string, ports ...int) string {
	for _, p := range ports {
		s = strings.ReplaceAll(s, portString(p), "PORT")
	}
	return strings.TrimSpace(s)
}

// outcomeConninfo is the libpq conninfo of an attempt psqlOutcome and
// pgxOutcome make.
func outcomeConninfo(port int, user, password, sslmode, cb string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s sslrootcert=%s channel_binding=%s",
		port, user, password, sslmode, cluster.CA.CertFile, cb)
}

func psqlOutcome(t *testing.T, port int, user, password, sslmode, cb string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conninfo := outcomeConninfo(port, user, password, sslmode, cb) + " connect_timeout=10"
	cmd := exec.CommandContext(ctx, "psql", conninfo, "-XAtqc", "SELECT current_user")
	cmd.Env = append(os.Environ(), "PGPASSFILE=/dev/null", "PGSERVICEFILE=/dev/null")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "error: " + normalize(stderr.String(), port)
	}
	return "ok: " + strings.TrimSpace(stdout.String())
}

func pgxOutcome(t *testing.T, port int, user, password, sslmode, cb string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conninfo := outcomeConninfo(port, user, password, sslmode, cb)
	conn, err := pgconn.Connect(ctx, conninfo)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return fmt.Sprintf("error: %s %s %s", pe.Severity, pe.Code, pe.Message)
		}
		return "error: " + normalize(err.Error(), port)
	}
	defer conn.Close(ctx)
	res := conn.ExecParams(ctx, "SELECT current_user", nil, nil, nil, nil).Read()
	if res.Err != nil {
		return "error: " + res.Err.Error()
	}
	return "ok: " + string(res.Rows[0][0])
}

type outcomeFunc func(t *testing.T, port int, user, password, sslmode, cb string) string

var clients = []struct {
	name string
	run  outcomeFunc
}{{"psql", psqlOutcome}, {"pgx", pgxOutcome}}

// TestClientsAuthenticateThroughTheProxyAsDirectly runs real clients
// against the cluster directly and through a proxy built on this package,
// over the matrix client TLS × upstream TLS × channel_binding, and wants
// the same outcome: the same current_user, or the same error.
func TestClientsAuthenticateThroughTheProxyAsDirectly(t *testing.T) {
	proxies := map[[2]bool]*testProxy{}
	for _, ct := range []bool{false, true} {
		for _, ut := range []bool{false, true} {
			proxies[[2]bool{ct, ut}] = startProxy(t, proxyOptions{clientTLS: ct, upstreamTLS: ut})
		}
	}
	for _, cl := range clients {
		for _, role := range []string{"alice", "md5user"} {
			for _, sslmode := range []string{"disable", "verify-full"} {
				for _, cb := range []string{"disable", "prefer", "require"} {
					direct := cl.run(t, cluster.Port, role, passwords[role], sslmode, cb)
					for _, ut := range []bool{false, true} {
						name := fmt.Sprintf("%s %s sslmode=%s channel_binding=%s upstream_tls=%v", cl.name, role, sslmode, cb, ut)
						t.Run(name, func(t *testing.T) {
							p := proxies[[2]bool{sslmode != "disable", ut}]
							got := normalize(cl.run(t, p.port(), role, passwords[role], sslmode, cb), cluster.Port)
							if got != normalize(direct, cluster.Port) {
								t.Fatalf("through the proxy:\n  %s\ndirect:\n  %s", got, direct)
							}
							wantOK := !(cb == "require" && (sslmode == "disable" || role == "md5user"))
							if wantOK != strings.HasPrefix(got, "ok: "+role) {
								t.Fatalf("outcome %q, want success %v", got, wantOK)
							}
							t.Log(got)
						})
					}
				}
			}
		}
	}
}

// TestFailuresLookLikePostgreSQL compares every failure case with the same
// attempt made directly.
func TestFailuresLookLikePostgreSQL(t *testing.T) {
	cases := []struct {
		name, user, password string
		want                 string // the ErrorResponse PostgreSQL 15 sends, as pgx reports it
	}{
		{"a wrong password", "alice", "wrong", `FATAL 28P01 password authentication failed for user "alice"`},
		{"an unknown role gets the wrong-password error", "nobody", "wrong", `FATAL 28P01 password authentication failed for user "nobody"`},
		{"a NOLOGIN role with its password", "nologin_user", passwords["nologin_user"], `FATAL 28000 role "nologin_user" is not permitted to log in`},
		{"a NOLOGIN role with a wrong password", "nologin_user", "wrong", `FATAL 28P01 password authentication failed for user "nologin_user"`},
		{"an expired role with its password", "expired_user", passwords["expired_user"], `FATAL 28P01 password authentication failed for user "expired_user"`},
		{"a role without password", "nopass_user", "anything", `FATAL 28P01 password authentication failed for user "nopass_user"`},
		{"an md5 role with a wrong password", "md5user", "wrong", `FATAL 28P01 password authentication failed for user "md5user"`},
	}
	for _, q := range []struct{ name, query string }{
		{"lookup through the SECURITY DEFINER function", functionQuery},
		{"lookup without rolcanlogin", "SELECT rolname, rolpassword, rolvaliduntil FROM phiproxy.user_lookup($1)"},
	} {
		for _, legs := range [][2]bool{{false, false}, {true, false}, {true, true}} {
			ct, ut := legs[0], legs[1]
			sslmode := map[bool]string{false: "disable", true: "verify-full"}[ct]
			p := startProxy(t, proxyOptions{clientTLS: ct, upstreamTLS: ut, query: q.query})
			for _, tc := range cases {
				for _, cl := range clients {
					t.Run(fmt.Sprintf("%s: %s with %s (sslmode=%s upstream_tls=%v)", q.name, tc.name, cl.name, sslmode, ut), func(t *testing.T) {
						direct := normalize(cl.run(t, cluster.Port, tc.user, tc.password, sslmode, "prefer"), cluster.Port)
						got := normalize(cl.run(t, p.port(), tc.user, tc.password, sslmode, "prefer"), p.port())
						if got != direct {
							t.Fatalf("through the proxy:\n  %s\ndirect:\n  %s", got, direct)
						}
						if cl.name == "pgx" && got != "error: "+tc.want {
							t.Fatalf("got %q, want %q", got, "error: "+tc.want)
						}
						t.Log(got)
					})
				}
			}
		}
	}
}

// TestUnknownRoleIsIndistinguishable drives the protocol by hand: an
// unknown role is offered the same mechanisms as a real one and a salt
// that stays the same from one attempt to the next.
func TestUnknownRoleIsIndistinguishable(t *testing.T) {
	lookup := catalogLookup(t, functionQuery)
	stateDir := t.TempDir()
	authenticator := func(secret []byte) *Authenticator {
		a, err := New(Options{Lookup: lookup, MockSecret: secret})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	loadSecret := func() []byte {
		secret, err := LoadMockSecret(stateDir)
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	a := authenticator(loadSecret())
	first := func(user string) (mechs []string, serverFirst string, final error) {
		cconn, sconn := net.Pipe()
		defer cconn.Close()
		done := make(chan error, 1)
		go func() {
			defer sconn.Close()
			_, err := a.Authenticate(context.Background(), pgproto3.NewBackend(sconn, sconn), Client{User: user, ChannelBinding: []byte("cb")})
			done <- err
		}()
		fe := pgproto3.NewFrontend(cconn, cconn)
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		mechs = msg.(*pgproto3.AuthenticationSASL).AuthMechanisms
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=clientnonce")})
		fe.Flush()
		msg, err = fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		serverFirst = string(msg.(*pgproto3.AuthenticationSASLContinue).Data)
		b64 := base64.StdEncoding.EncodeToString
		cf := "c=" + b64([]byte("p=tls-server-end-point,,cb")) + "," + strings.Split(serverFirst, ",")[0] + ",p=" + b64(make([]byte, 32))
		fe.Send(&pgproto3.SASLResponse{Data: []byte(cf)})
		fe.Flush()
		return mechs, serverFirst, <-done
	}
	salt := func(sf string) string { return strings.Split(sf, ",")[1] }
	realMechs, realFirst, realErr := first("alice")
	m1, f1, e1 := first("ghost")
	_, f2, _ := first("ghost")
	if fmt.Sprint(realMechs) != fmt.Sprint(m1) {
		t.Fatalf("mechanisms differ: %v vs %v", realMechs, m1)
	}
	if salt(f1) != salt(f2) {
		t.Fatal("the unknown role's salt changes between attempts")
	}
	if salt(f1) == salt(realFirst) || len(salt(f1)) != len(salt(realFirst)) {
		t.Fatalf("mock salt %q vs real %q", salt(f1), salt(realFirst))
	}
	// A restart: a new Authenticator with the secret read back from
	// state_dir gives the unknown role the same salt, as the real role
	// keeps its own; one with another secret does not.
	a = authenticator(loadSecret())
	if _, f3, _ := first("ghost"); salt(f3) != salt(f1) {
		t.Fatal("the unknown role's salt changes across a restart with the same state_dir")
	}
	a = authenticator(NewMockSecret())
	if _, f4, _ := first("ghost"); salt(f4) == salt(f1) {
		t.Fatal("the mock salt does not depend on the secret")
	}
	for _, err := range []error{realErr, e1} {
		if pe := pgerr.As(err); pe == nil || pe.Code != pgerr.InvalidPassword {
			t.Fatalf("err = %v, want 28P01", err)
		}
	}
}

// TestLookupFunction checks the documented SECURITY DEFINER function: the
// catalog role cannot read pg_authid, but can look a verifier up through
// the function, and the docs show exactly the function tested here.
func TestLookupFunction(t *testing.T) {
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, cluster.DSN(catalogRole, catalogPassword, "postgres", "sslmode=disable"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SELECT rolpassword FROM pg_authid").ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("catalog role read pg_authid: %v", err)
	}
	v, err := catalogLookup(t, functionQuery)(ctx, "alice")
	if err != nil || v == nil || v.Role != "alice" || !strings.HasPrefix(v.Secret, "SCRAM-SHA-256$4096:") || !v.CanLogin || v.ValidUntil != nil {
		t.Fatalf("lookup alice = %+v, %v", v, err)
	}
	v, err = catalogLookup(t, functionQuery)(ctx, "expired_user")
	if err != nil || v == nil || v.ValidUntil == nil || v.ValidUntil.Year() != 2000 {
		t.Fatalf("lookup expired_user = %+v, %v", v, err)
	}
	v, err = catalogLookup(t, functionQuery)(ctx, "forever")
	if err != nil || v == nil || v.ValidUntil != nil {
		t.Fatalf("lookup forever (VALID UNTIL infinity) = %+v, %v", v, err)
	}
	v, err = catalogLookup(t, functionQuery)(ctx, "nologin_user")
	if err != nil || v == nil || v.CanLogin {
		t.Fatalf("lookup nologin_user = %+v, %v", v, err)
	}
	if v, err = catalogLookup(t, functionQuery)(ctx, "ghost"); v != nil || err != nil {
		t.Fatalf("lookup ghost = %+v, %v", v, err)
	}
	docs, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(docs), lookupFunctionSQL) {
		t.Fatal("docs/configuration.md does not show the lookup function tested here")
	}
}

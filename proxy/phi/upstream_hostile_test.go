package phi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
)

// Issue 18, bad input item 8: a misbehaving upstream. A relay between
// the proxy and the real server rewrites the server's answer to a
// statement (recognised by a marker in a non-PHI column of its row):
// the client gets an error, never a partial row or a ciphertext, and
// the proxy keeps serving.

// mangle rewrites one server message (typ, body) into the bytes to send
// instead; cut ends both connections after they are written.
type mangle func(typ byte, body []byte) (out []byte, cut bool)

// manglingUpstream relays to the test cluster, passing every server
// message whose body contains marker through m.
func manglingUpstream(t *testing.T, marker string, m mangle) string {
	t.Helper()
	ln := testenv.AcceptLoop(t, nil, func(c net.Conn) {
		s, err := net.Dial("tcp", testCluster.Addr())
		if err != nil {
			c.Close()
			return
		}
		var wg sync.WaitGroup
		defer wg.Wait()
		defer c.Close()
		defer s.Close()
		wg.Go(func() { _, _ = io.Copy(s, c); s.Close() })
		r := bufio.NewReader(s)
		// The startup answers are untyped only for SSLRequest, which the
		// test config never sends: every message is typed.
		for {
			var h [5]byte
			if _, err := io.ReadFull(r, h[:]); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint32(h[1:])-4)
			if _, err := io.ReadFull(r, body); err != nil {
				return
			}
			out, cut := append(h[:], body...), false
			if bytes.Contains(body, []byte(marker)) {
				out, cut = m(h[0], body)
			}
			if _, err := c.Write(out); err != nil || cut {
				return
			}
		}
	})
	return ln.Addr().String()
}

// dataRow is the body of a DataRow of vals (nil: NULL).
func dataRow(vals ...[]byte) []byte {
	return frameBody(&pgproto3.DataRow{Values: vals})
}

// rowFields decodes a DataRow body (well-formed: it came from the server).
func rowFields(body []byte) [][]byte {
	var row pgproto3.DataRow
	if err := row.Decode(body); err != nil {
		panic("BUG: a DataRow from the server: " + err.Error())
	}
	return row.Values
}

func TestMisbehavingUpstream(t *testing.T) {
	ctx, setup := start(t)
	seed := setup.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, seed, "INSERT INTO patients (id, name, ssn, diagnosis) VALUES (1, 'mangle-me', $1, $2)", "123-45-6789", "secret diagnosis")
	rec := testKeys(t).Recognizer()

	cases := []struct {
		name string
		m    mangle
		// simpleOnly: checked in the simple protocol only.
		simpleOnly bool
	}{
		{"a DataRow with a field fewer", func(typ byte, body []byte) ([]byte, bool) {
			if typ != 'D' {
				return rawFrame(typ, body), false
			}
			f := rowFields(body)
			return rawFrame('D', dataRow(f[:len(f)-1]...)), false
		}, false},
		{"a DataRow with a field more", func(typ byte, body []byte) ([]byte, bool) {
			if typ != 'D' {
				return rawFrame(typ, body), false
			}
			return rawFrame('D', dataRow(append(rowFields(body), []byte("extra"))...)), false
		}, false},
		{"a DataRow with no fields", func(typ byte, body []byte) ([]byte, bool) {
			return rawFrame(typ, dataRow()), false
		}, false},
		{"a DataRow whose field overruns it", func(typ byte, body []byte) ([]byte, bool) {
			b := append([]byte{}, body...)
			binary.BigEndian.PutUint32(b[2:], 1<<30)
			return rawFrame(typ, b), false
		}, false},
		{"a DataRow larger than max_message_bytes", func(typ byte, body []byte) ([]byte, bool) {
			f := rowFields(body)
			f[1] = bytes.Repeat([]byte("x"), 128<<10)
			return rawFrame('D', dataRow(f...)), false
		}, false},
		{"an ErrorResponse without SQLSTATE instead of the row", func(typ byte, body []byte) ([]byte, bool) {
			return rawFrame('E', []byte("SERROR\x00Mmangled\x00\x00")), false
		}, false},
		{"a connection reset mid-row", func(typ byte, body []byte) ([]byte, bool) {
			full := rawFrame(typ, body)
			return full[:len(full)/2], true
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := *testCfg
			cfg.Upstream.Address = manglingUpstream(t, "mangle-me", c.m)
			cfg.Limits.MaxMessageBytes = 64 << 10
			p := serveProxy(t, ctx, &cfg)
			modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement}
			if c.simpleOnly {
				modes = modes[:1]
			}
			for _, mode := range modes {
				conn := connect(t, ctx, p.dsn(), mode)
				vals, err := readAll(ctx, conn, "SELECT id, name, ssn, diagnosis FROM patients WHERE id = 1")
				if err == nil {
					t.Fatalf("%v: the mangled answer was served: %q", mode, vals)
				}
				for _, v := range vals {
					if rec.Contains(v) || strings.Contains(string(v), "123-45-6789") || strings.Contains(string(v), "secret diagnosis") {
						t.Fatalf("%v: a PHI value reached the client with the error %v", mode, err)
					}
				}
				if strings.Contains(err.Error(), "123-45-6789") || rec.Contains([]byte(err.Error())) || strings.Contains(strings.ToLower(err.Error()), "x504801") {
					t.Fatalf("%v: the error quotes a value: %v", mode, err)
				}
				// The proxy still serves.
				fresh := connect(t, ctx, p.dsn(), mode)
				var n int
				if err := fresh.QueryRow(ctx, "SELECT count(*) FROM patients WHERE ssn = $1", "000-00-0000").Scan(&n); err != nil {
					t.Fatalf("%v: the proxy stopped serving: %v", mode, err)
				}
			}
			if logs := p.logs.String(); strings.Contains(logs, "123-45-6789") || strings.Contains(logs, "secret diagnosis") || strings.Contains(logs, "phiproxy bug") {
				t.Fatalf("log:\n%s", logs)
			}
		})
	}
}

// TestTriggerNoticeAndNotifyRedacted: a trigger created directly on the
// server that NOTIFYs or RAISEs a NOTICE with the new row's ciphertext
// (issue 18, found by a second review) reaches neither the writer nor a
// listener with the envelope in it: both are redacted to <encrypted>.
func TestTriggerNoticeAndNotifyRedacted(t *testing.T) {
	ctx, p := start(t)
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, `CREATE OR REPLACE FUNCTION hostile_leak() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('hostile_leak', 'ssn=' || encode(NEW.ssn, 'hex'));
	RAISE NOTICE 'ssn %', NEW.ssn USING DETAIL = encode(NEW.ssn, 'escape');
	RETURN NEW;
END$$`)
	mustExec(t, ctx, direct, "CREATE TRIGGER hostile_leak AFTER INSERT ON patients FOR EACH ROW EXECUTE FUNCTION hostile_leak()")
	t.Cleanup(func() {
		if _, err := direct.Exec(context.Background(), "DROP TRIGGER IF EXISTS hostile_leak ON patients"); err != nil {
			t.Error(err)
		}
	})
	rec := testKeys(t).Recognizer()
	listener := p.via(pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, listener, "LISTEN hostile_leak")
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		var notices []*pgconn.Notice
		conn := connectWith(t, ctx, p.dsn(), func(cc *pgx.ConnConfig) {
			cc.DefaultQueryExecMode = mode
			cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n) }
		})
		ssn := []string{"trg-111-22-3333", "trg-444-55-6666"}[i]
		mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7100+i, ssn)
		if len(notices) != 1 {
			t.Fatalf("%v: %d notices", mode, len(notices))
		}
		for _, f := range []string{notices[0].Message, notices[0].Detail} {
			if rec.Contains([]byte(f)) || strings.Contains(f, ssn) || !strings.Contains(f, crypto.EnvelopeRedacted) {
				t.Fatalf("%v: notice field %q", mode, f)
			}
		}
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Contains([]byte(n.Payload)) || n.Payload != "ssn="+crypto.EnvelopeRedacted {
			t.Fatalf("%v: notification payload %q", mode, n.Payload)
		}
		stillWorks(t, ctx, conn)
	}
	if strings.Contains(p.logs.String(), "trg-") {
		t.Fatal("a value reached the log")
	}
}

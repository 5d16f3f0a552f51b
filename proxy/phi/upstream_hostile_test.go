package phi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

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

func msgBytes(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// dataRow encodes a DataRow of vals (nil: NULL).
func dataRow(vals ...[]byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		if v == nil {
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// rowFields decodes a DataRow body (well-formed: it came from the server).
func rowFields(body []byte) [][]byte {
	n := int(binary.BigEndian.Uint16(body))
	out := make([][]byte, 0, n)
	body = body[2:]
	for i := 0; i < n; i++ {
		l := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if l < 0 {
			out = append(out, nil)
			continue
		}
		out = append(out, body[:l])
		body = body[l:]
	}
	return out
}

func TestMisbehavingUpstream(t *testing.T) {
	ctx := testCtx(t)
	setup := startProxy(t)
	seed := connect(t, ctx, setup.dsn(), pgx.QueryExecModeCacheStatement)
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
				return msgBytes(typ, body), false
			}
			f := rowFields(body)
			return msgBytes('D', dataRow(f[:len(f)-1]...)), false
		}, false},
		{"a DataRow with a field more", func(typ byte, body []byte) ([]byte, bool) {
			if typ != 'D' {
				return msgBytes(typ, body), false
			}
			return msgBytes('D', dataRow(append(rowFields(body), []byte("extra"))...)), false
		}, false},
		{"a DataRow with no fields", func(typ byte, body []byte) ([]byte, bool) {
			return msgBytes(typ, dataRow()), false
		}, false},
		{"a DataRow whose field overruns it", func(typ byte, body []byte) ([]byte, bool) {
			b := append([]byte{}, body...)
			binary.BigEndian.PutUint32(b[2:], 1<<30)
			return msgBytes(typ, b), false
		}, false},
		{"a DataRow larger than max_message_bytes", func(typ byte, body []byte) ([]byte, bool) {
			f := rowFields(body)
			f[1] = bytes.Repeat([]byte("x"), 128<<10)
			return msgBytes('D', dataRow(f...)), false
		}, false},
		{"an ErrorResponse without SQLSTATE instead of the row", func(typ byte, body []byte) ([]byte, bool) {
			return msgBytes('E', []byte("SERROR\x00Mmangled\x00\x00")), false
		}, false},
		{"a connection reset mid-row", func(typ byte, body []byte) ([]byte, bool) {
			full := msgBytes(typ, body)
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

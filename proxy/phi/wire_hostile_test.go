package phi

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// Issue 18, bad input item 1: malformed frames from a client of a PHI
// session get a clear error (08P01), the connection intact or closed
// cleanly, and the proxy keeps serving.

// rawFrame is a typed message with the given body.
func rawFrame(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// rawSession logs in through the proxy and hands over the connection.
func rawSession(t *testing.T, ctx context.Context, p *testProxy) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	return testenv.Hijack(t, ctx, p.dsn(), 20*time.Second)
}

// answer reads backend messages until ReadyForQuery or the end of the
// connection, and returns the SQLSTATEs of the errors, whether the last
// was FATAL, and whether the connection ended.
type answer struct {
	codes  []string
	fatal  bool
	closed bool
	rfq    bool
}

func readAnswer(t *testing.T, fe *pgproto3.Frontend) answer {
	t.Helper()
	var a answer
	for {
		msg, err := fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("no answer: timed out")
			}
			a.closed = true
			return a
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			a.codes = append(a.codes, m.Code)
			a.fatal = m.Severity == "FATAL"
		case *pgproto3.ReadyForQuery:
			a.rfq = true
			return a
		}
	}
}

func bindBody(stmt string, formats []int16, params [][]byte) []byte {
	b := []byte("\x00" + stmt + "\x00") // unnamed portal
	b = binary.BigEndian.AppendUint16(b, uint16(len(formats)))
	for _, f := range formats {
		b = binary.BigEndian.AppendUint16(b, uint16(f))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(params)))
	for _, p := range params {
		if p == nil {
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return append(b, 0, 0) // no result format codes
}

func parseFrame(name, sql string) []byte {
	return rawFrame('P', []byte(name+"\x00"+sql+"\x00\x00\x00"))
}

func TestMalformedClientFrames(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	const phiSelect = "SELECT id, ssn FROM patients WHERE ssn = $1"
	sync := rawFrame('S', nil)
	cases := []struct {
		name string
		in   []byte
		// fatal: the session ends with FATAL code; else the error is
		// code and the session answers a query afterwards.
		fatal bool
		code  string
	}{
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, true, "08P01"},
		{"length 0xFFFFFFFF", []byte{'Q', 0xFF, 0xFF, 0xFF, 0xFF}, true, "08P01"},
		{"length 0x80000000", []byte{'Q', 0x80, 0, 0, 0}, true, "08P01"},
		{"empty Query body", rawFrame('Q', nil), true, "08P01"},
		{"Query without its NUL", rawFrame('Q', []byte("SELECT 1")), true, "08P01"},
		{"short Parse", rawFrame('P', []byte("s\x00")), true, "08P01"},
		{"short Bind", rawFrame('B', []byte("\x00")), true, "08P01"},
		{"Bind with a truncated parameter", rawFrame('B', []byte("\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09abc")), true, "08P01"},
		{"unknown message type", rawFrame('z', []byte("junk")), true, "08P01"},
		{"a startup-phase message after startup", rawFrame('p', []byte("secret\x00")), true, "08P01"},
		{"Bind with more parameters than the statement", append(append(parseFrame("", phiSelect),
			rawFrame('B', bindBody("", nil, [][]byte{[]byte("111-22-3333"), []byte("x")}))...), sync...), false, "08P01"},
		{"Bind with fewer parameters than the statement", append(append(parseFrame("", phiSelect),
			rawFrame('B', bindBody("", nil, nil))...), sync...), false, "08P01"},
		{"Bind with a format code out of range", append(append(parseFrame("", phiSelect),
			rawFrame('B', bindBody("", []int16{2}, [][]byte{[]byte("111-22-3333")}))...), sync...), false, "08P01"},
		{"Bind with a negative format code", append(append(parseFrame("", phiSelect),
			rawFrame('B', bindBody("", []int16{-1}, [][]byte{[]byte("111-22-3333")}))...), sync...), false, "08P01"},
		// PostgreSQL answers this one with an ERROR; the proxy, which
		// re-encodes a PHI Bind with one code per parameter, ends the
		// session rather than forward a repaired message.
		{"Bind with more format codes than parameters", append(append(parseFrame("", phiSelect),
			rawFrame('B', bindBody("", []int16{0, 0}, [][]byte{[]byte("111-22-3333")}))...), sync...), true, "08P01"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, fe := rawSession(t, ctx, p)
			if _, err := conn.Write(c.in); err != nil {
				t.Fatal(err)
			}
			a := readAnswer(t, fe)
			if c.fatal {
				if !a.fatal || !a.closed || len(a.codes) != 1 || a.codes[0] != c.code {
					t.Fatalf("got %+v, want FATAL %s and the connection closed", a, c.code)
				}
				return
			}
			if a.closed || !a.rfq || len(a.codes) != 1 || a.codes[0] != c.code {
				t.Fatalf("got %+v, want one error %s and ReadyForQuery", a, c.code)
			}
			if _, err := conn.Write(rawFrame('Q', []byte("SELECT 1\x00"))); err != nil {
				t.Fatal(err)
			}
			if a := readAnswer(t, fe); len(a.codes) != 0 || !a.rfq {
				t.Fatalf("after the error: %+v", a)
			}
		})
	}
	t.Run("truncated header then EOF", func(t *testing.T) {
		conn, fe := rawSession(t, ctx, p)
		if _, err := conn.Write([]byte{'Q', 0, 0}); err != nil {
			t.Fatal(err)
		}
		conn.(interface{ CloseWrite() error }).CloseWrite()
		if a := readAnswer(t, fe); !a.closed {
			t.Fatalf("got %+v, want the connection closed", a)
		}
	})
	// The proxy still serves, and logged no value.
	rawSession(t, ctx, p)
	if strings.Contains(p.logs.String(), "111-22-3333") || strings.Contains(p.logs.String(), "secret") {
		t.Fatal("a value reached the log")
	}
}

package phi

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// frameBody is msg as pgproto3 encodes it, without its type and length:
// a body for rawFrame.
func frameBody(msg interface{ Encode([]byte) ([]byte, error) }) []byte {
	b, err := msg.Encode(nil)
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return b[5:]
}

// bindBody is the body of a Bind of the statement stmt to the unnamed
// portal, with no result format codes.
func bindBody(stmt string, formats []int16, params [][]byte) []byte {
	return frameBody(&pgproto3.Bind{PreparedStatement: stmt, ParameterFormatCodes: formats, Parameters: params})
}

func parseFrame(name, sql string) []byte {
	return rawFrame('P', []byte(name+"\x00"+sql+"\x00\x00\x00"))
}

func TestMalformedClientFrames(t *testing.T) {
	ctx, p := start(t)
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
			conn, fe := rawSession(t, ctx, p.testProxy)
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
		conn, fe := rawSession(t, ctx, p.testProxy)
		if _, err := conn.Write([]byte{'Q', 0, 0}); err != nil {
			t.Fatal(err)
		}
		conn.(interface{ CloseWrite() error }).CloseWrite()
		if a := readAnswer(t, fe); !a.closed {
			t.Fatalf("got %+v, want the connection closed", a)
		}
	})
	// The proxy still serves, and logged no value.
	rawSession(t, ctx, p.testProxy)
	if strings.Contains(p.logs.String(), "111-22-3333") || strings.Contains(p.logs.String(), "secret") {
		t.Fatal("a value reached the log")
	}
}

// Issue 18, item 7: untyped (OID 0), binary and oddly typed Bind
// parameters bound to PHI columns are encrypted correctly or refused,
// never forwarded raw.
func TestOddlyTypedPHIParameters(t *testing.T) {
	ctx, p := start(t)
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
	const (
		oidText = 25
		oidInt4 = 23
		oidInt8 = 20
	)
	// Every ssn is a canary: sent in the clear it would be in the
	// server log (log_statement = all prints parameters).
	ssn := func(i int) []byte { return []byte(canary(t, "odd"+strconv.Itoa(i))) }
	int8be := func(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }
	int4be := func(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
	cases := []struct {
		name    string
		oids    []uint32
		formats []int16
		params  [][]byte
		// want: the stored ssn/mrn read back through the proxy, or ""
		// when the statement must be refused.
		wantSSN string
		wantMRN string
	}{
		{"untyped text", []uint32{0, 0, 0}, nil, [][]byte{[]byte("8001"), ssn(1), []byte("42")}, string(ssn(1)), "42"},
		{"declared text, text format", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8002"), ssn(2), []byte("43")}, string(ssn(2)), "43"},
		{"binary int8 for the int8 PHI column", []uint32{oidInt4, oidText, oidInt8}, []int16{1, 0, 1}, [][]byte{int4be(8003), ssn(3), int8be(44)}, string(ssn(3)), "44"},
		{"untyped binary int8", []uint32{oidInt4, 0, 0}, []int16{1, 0, 1}, [][]byte{int4be(8004), ssn(4), int8be(45)}, string(ssn(4)), "45"},
		{"binary int4 bytes for the int8 PHI column", []uint32{oidInt4, oidText, oidInt4}, []int16{1, 0, 1}, [][]byte{int4be(8005), ssn(5), int4be(46)}, string(ssn(5)), "46"},
		{"binary of the wrong width", []uint32{oidInt4, oidText, oidInt8}, []int16{1, 0, 1}, [][]byte{int4be(8006), ssn(6), {0, 1, 2}}, "", ""},
		{"text that is no integer for the int8 PHI column", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8007"), ssn(7), []byte("forty")}, "", ""},
		{"a NUL byte in a text PHI value", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8008"), append(ssn(8), "\x00x"...), []byte("48")}, "", ""},
		{"invalid UTF-8 in a text PHI value", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8009"), append(ssn(9), 0xff), []byte("49")}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, fe := rawSession(t, ctx, p.testProxy)
			var parse []byte
			parse = append(parse, "\x00INSERT INTO patients (id, ssn, mrn) VALUES ($1, $2, $3)\x00"...)
			parse = binary.BigEndian.AppendUint16(parse, uint16(len(c.oids)))
			for _, o := range c.oids {
				parse = binary.BigEndian.AppendUint32(parse, o)
			}
			msgs := append(rawFrame('P', parse), rawFrame('B', bindBody("", c.formats, c.params))...)
			msgs = append(msgs, rawFrame('E', []byte("\x00\x00\x00\x00\x00"))...)
			msgs = append(msgs, rawFrame('S', nil)...)
			if _, err := conn.Write(msgs); err != nil {
				t.Fatal(err)
			}
			a := readAnswer(t, fe)
			id := string(c.params[0])
			if c.formats != nil && c.formats[0] == 1 {
				id = strconv.Itoa(int(binary.BigEndian.Uint32(c.params[0])))
			}
			var stored []byte
			err := direct.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = "+id).Scan(&stored)
			if c.wantSSN == "" {
				if len(a.codes) == 0 {
					t.Fatalf("accepted (stored %q)", stored)
				}
				if err == nil {
					t.Fatalf("refused with %v but a row was stored", a.codes)
				}
				// Refused by the proxy: the INSERT never reached the
				// server (which logs each Bind's parameters).
				assertNotLogged(t, "$1 = '"+id+"'")
				return
			}
			if len(a.codes) != 0 || err != nil {
				t.Fatalf("got errors %v, read %v", a.codes, err)
			}
			if !strings.HasPrefix(string(stored), "PH\x01") {
				t.Fatalf("ssn stored without the envelope: %q", stored)
			}
			via := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
			var ssn string
			var mrn int64
			if err := via.QueryRow(ctx, "SELECT ssn, mrn FROM patients WHERE id = "+id).Scan(&ssn, &mrn); err != nil {
				t.Fatal(err)
			}
			if ssn != c.wantSSN || strconv.Itoa(int(mrn)) != c.wantMRN {
				t.Fatalf("read back ssn %q mrn %d, want %q %s", ssn, mrn, c.wantSSN, c.wantMRN)
			}
		})
	}
	for i := 1; i <= len(cases); i++ {
		assertNotLogged(t, string(ssn(i)))
		if strings.Contains(p.logs.String(), string(ssn(i))) {
			t.Fatal("a value reached the proxy's log")
		}
	}
}

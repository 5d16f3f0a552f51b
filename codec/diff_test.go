package codec

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
	"github.com/phiproxy/phiproxy/pgerr"
)

// The cluster starts on first use, so the pure tests, benchmarks and fuzz
// targets need no server.
var shared = testenv.LazyCluster{Options: pgcluster.Options{NoTLS: true}}

func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

func serverConn(t *testing.T, params ...string) *pgx.Conn {
	t.Helper()
	c := shared.Get(t)
	return testenv.Connect(t, context.Background(), c.DSN(c.SuperUser, c.SuperPassword, "postgres", append([]string{"sslmode=disable"}, params...)...), nil)
}

// diffInputs are tricky inputs per type; every one is sent to PostgreSQL.
var diffInputs = map[string][]string{
	"text":    {"", "plain", " spaced ", "ünïcödé ✓", "quote ' and \" and \\", "line\nbreak", "\x01ctl", "\xff\xfe", "nul\x00byte", "{a,b}"},
	"varchar": {"", "x", "日本語"},
	"bpchar":  {"", "ab", "ab  ", " a"},
	"int4": {"0", "007", "-0", "+42", " 12 ", "\t-7\n", "2147483647", "-2147483648", "2147483648", "-2147483649",
		"1e3", "1.0", "", " ", "12abc", "0x10", "1_000", "99999999999999999999"},
	"int8": {"0", "-9223372036854775808", "9223372036854775807", "9223372036854775808", "  +0012  ", "--1", "1 2"},
	"bool": {"t", "true", "TRUE", "True ", " yes", "y", "on", "1", "f", "false", "no", "n", "off", "of", "0",
		"o", "tr", "tru", "truex", "2", "", "yes please", "ON"},
	"uuid": {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
		"{a0eebc999c0b4ef8bb6d6bb9bd380a11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
		" a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11", ""},
	"numeric": {"0", "1.50", "-0", "-0.00", "+1.5", " 1.5 ", ".5", "5.", "-.5", "1e3", "1E-3", "1.5e-3", "1.50e1",
		"1.0E+2", "0e-5", "0e99999", "00012.3400", "NaN", "nan", " -Infinity ", "inf", "-inf", "+inf", "Infinity",
		"1e 3", "1e", "e5", ".", "1.2.3", "1..2", "", "1e-16383", "1e-16384", "1e131071", "1e131072", "9e999999999999",
		"123456789012345678901234567890.098765432109876543210", "0.000001", "100000000", "10000.0001", "-99999999.99990000"},
	"date": {"1980-01-02", "1980-1-2", " 1980-01-02 ", "1980-01-02T10:00", "1980-01-02 10:00:00+05", "0001-01-01 BC",
		"4714-11-24 BC", "4714-11-23 BC", "5874897-12-31", "5874898-01-01", "2000-02-29", "1900-02-29", "2000-13-01",
		"2000-00-10", "2000-01-32", "0000-01-01", "infinity", "-infinity", "epoch", "Infinity", "2000-01-01 AD",
		"2020-04-31", "0044-03-15 bc", "12345-06-07", "1980-01-02 +00", "1980-01-02 -05:30", "1980-01-02 +"},
	"timestamp": {"2020-01-02 03:04:05", "2020-1-2 3:04:05", "2020-01-02T03:04:05.123", "2020-01-02 03:04:05.1234567",
		"2020-01-02 03:04:05.9999995", "2020-01-02 03:04:05.0000005", "2020-01-02 03:04:05.0000015", "2020-01-02 03:04:05.5000000",
		"2020-01-02 03:04", "2020-01-02", "2020-01-02 +03", "2020-01-02 24:00:00", "2020-01-02 24:00:01", "2020-12-31 23:59:60",
		"2020-01-02 03:04:05+05", "2020-01-02 03:04:05Z", "0001-01-01 00:00:00 BC", "4714-11-24 00:00:00 BC",
		"294276-12-31 23:59:59.999999", "294277-01-01 00:00:00", "infinity", "-infinity", "epoch",
		"2020-01-02 03:04:05.", "2020-01-02 3:4:5", "2020-01-02 25:00:00", "2020-01-02 03:60:00"},
	"timestamptz": {"2020-01-02 03:04:05+00", "2020-01-02 +05", "2020-01-02 -00:30", "2020-01-02 03:04:05", "2020-01-02 03:04:05+05", "2020-01-02 03:04:05-08:30",
		"2020-01-02 03:04:05 +0530", "2020-01-02 03:04:05+05:30:15", "2020-01-02T03:04:05.25Z", "2020-01-02 03:04:05 UTC",
		"2020-01-02 03:04:05 GMT", "2020-01-02 03:04:05+15:59", "2020-01-02 03:04:05+16", "2020-01-02 03:04:05 BC",
		"1000-01-01 00:00:00+14 BC", "294276-12-31 23:59:59+00", "294276-12-31 23:00:00-05", "infinity", "epoch",
		"2020-01-02 03:04:05+5", "2020-01-02"},
	"jsonb": {`{}`, `[]`, `null`, `true`, `"s"`, `1`, `-0`, `1.50`, `1e2`, `1E-2`, `-1.5e+3`, ` {"b": 1, "a": 2} `,
		`{"aa":1,"b":2,"c":{"zz":[1,2,{"y":null}],"x":true}}`, `{"a":1,"a":2}`, `{"a":1,"b":0,"a":3}`,
		`"\u00e9\ud83d\ude00\n\t\"\\\/"`, `"\u001f\u007f"`, `"é"`, `"\u0000"`, `"\ud83d"`, `"\ude00"`, `"\x"`,
		"\"tab\tinside\"", `[1,2,]`, `{"a"}`, `01`, `1.`, `.5`, `tru`, `truex`, `nul`, `[1 2]`, `{"a":1}x`, ``,
		`{"é":1,"e":2,"ee":3}`, `[1e1000000]`, `"` + strings.Repeat("x", 300) + `"`, `{"k":"\r\b\f"}`},
}

type serverResult struct {
	text   string
	binary []byte
	err    *pgconn.PgError
}

// serverExpr is the server's value of $1 of type typ in canonical form:
// numeric without trailing fraction zeros (the codec's canonical form, so
// that equal numerics are equal plaintexts).
func serverExpr(typ string) string {
	if typ == "numeric" {
		return "trim_scale($1::text::numeric)"
	}
	return "$1::text::" + typ
}

func serverEval(t *testing.T, conn *pgx.Conn, typ, input string) serverResult {
	t.Helper()
	ctx := context.Background()
	e := serverExpr(typ)
	res := conn.PgConn().ExecParams(ctx, fmt.Sprintf("SELECT %s, %s", e, e),
		[][]byte{[]byte(input)}, []uint32{25}, []int16{0}, []int16{0, 1}).Read()
	if res.Err != nil {
		if pe, ok := res.Err.(*pgconn.PgError); ok {
			return serverResult{err: pe}
		}
		t.Fatal(res.Err)
	}
	return serverResult{text: string(res.Rows[0][0]), binary: res.Rows[0][1]}
}

// TestDifferentialAgainstPostgres checks every input against PostgreSQL 15:
// where the server accepts, Canonical must equal its text output and the
// binary forms must round trip both ways; where it refuses, so must the
// codec. The only permitted difference is the documented one: date/time
// forms outside the ISO subset are refused with 22007.
func TestDifferentialAgainstPostgres(t *testing.T) {
	conn := serverConn(t, "timezone=UTC", "datestyle=ISO")
	ctx := context.Background()
	for _, typ := range Types() {
		for _, in := range diffInputs[typ] {
			t.Run(fmt.Sprintf("%s %q", typ, in), func(t *testing.T) {
				srv := serverEval(t, conn, typ, in)
				got, err := Canonical(typ, TextFormat, []byte(in))
				if srv.err != nil {
					if err == nil {
						t.Fatalf("server refuses (%s %s), codec accepts as %q", srv.err.Code, srv.err.Message, got)
					}
					return
				}
				if err != nil {
					pe := pgerr.As(err)
					if isDateTime(typ) && pe != nil && pe.Code == pgerr.InvalidDatetimeFormat {
						t.Logf("outside the accepted ISO subset (server: %q)", srv.text)
						return
					}
					t.Fatalf("server accepts as %q, codec refuses: %v", srv.text, err)
				}
				if typ == "jsonb" && string(got) != srv.text {
					// jsonb numbers are canonical without trailing
					// fraction zeros, which jsonb_out keeps: the
					// canonical form must be a document the server
					// outputs as is, and equal to the input.
					var eq bool
					if err := conn.QueryRow(ctx, "SELECT $1::text::jsonb = $2::text::jsonb", in, string(got)).Scan(&eq); err != nil || !eq {
						t.Fatalf("canonical %q is not equal to the input as jsonb: %v", got, err)
					}
					srv = serverEval(t, conn, typ, string(got))
				}
				if string(got) != srv.text {
					t.Fatalf("canonical %q, server %q", got, srv.text)
				}
				bin, err := Encode(typ, BinaryFormat, got)
				if err != nil {
					t.Fatal(err)
				}
				if string(bin) != string(srv.binary) {
					t.Errorf("binary encode %x, server sends %x", bin, srv.binary)
				}
				back, err := Canonical(typ, BinaryFormat, srv.binary)
				if err != nil || string(back) != srv.text {
					t.Errorf("canonical of server's binary = %q, %v; want %q", back, err, srv.text)
				}
				// The server decodes our binary to the same value.
				res := conn.PgConn().ExecParams(ctx, "SELECT $1", [][]byte{bin}, []uint32{OID(typ)}, []int16{1}, []int16{0}).Read()
				if res.Err != nil || string(res.Rows[0][0]) != srv.text {
					t.Errorf("server reads our binary as %v, %v", res.Rows, res.Err)
				}
				// Canonical is a fixed point.
				if again, err := Canonical(typ, TextFormat, got); err != nil || string(again) != string(got) {
					t.Errorf("canonical of canonical = %q, %v", again, err)
				}
			})
		}
	}
}

func isDateTime(typ string) bool { return typ == "date" || typ == "timestamp" || typ == "timestamptz" }

package codec

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/phiproxy/phiproxy/pgerr"
)

func TestCanonicalForms(t *testing.T) {
	cases := []struct{ typ, in, want string }{
		{"date", "1980-1-2", "1980-01-02"},
		{"int4", "007", "7"},
		{"int8", " -0 ", "0"},
		{"bool", "yes", "t"},
		{"bool", "1", "t"},
		{"bool", "OFF", "f"},
		{"uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"numeric", "1.50", "1.5"},
		{"numeric", "1.0", "1"},
		{"numeric", "-0.00", "0"},
		{"numeric(5,2)", "1.5", "1.50"},
		{"jsonb", `{"a":1.0,"b":[1e2, 1.10]}`, `{"a": 1, "b": [100, 1.1]}`},
		{"numeric", "1.5e-3", "0.0015"},
		{"jsonb", `{"bb":1, "a":{"c":[1,2.50]},"a":true}`, `{"a": true, "bb": 1}`},
		{"timestamptz", "2020-06-01T12:00:00+02", "2020-06-01 10:00:00+00"},
		{"timestamp", "2020-06-01 12:00:00.120", "2020-06-01 12:00:00.12"},
		{"text", "as is ", "as is "},
	}
	for _, c := range cases {
		t.Run(c.typ+" "+c.in+" becomes "+c.want, func(t *testing.T) {
			got, err := Canonical(c.typ, TextFormat, []byte(c.in))
			if err != nil || string(got) != c.want {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
}

func TestOIDs(t *testing.T) {
	for typ, want := range map[string][2]uint32{"text": {25, 1009}, "date": {1082, 1182}, "jsonb": {3802, 3807}, "int4": {23, 1007}} {
		if OID(typ) != want[0] || ArrayOID(typ) != want[1] {
			t.Errorf("%s: %d %d", typ, OID(typ), ArrayOID(typ))
		}
	}
	if OID("money") != 0 {
		t.Error("unknown types have OID 0")
	}
}

// TestErrorsNeverEchoTheValue feeds invalid values that carry a canary and
// checks every error is a *pgerr.Error whose text never contains it.
func TestErrorsNeverEchoTheValue(t *testing.T) {
	const canary = "123-45-6789"
	for _, typ := range Types() {
		for _, format := range []int16{TextFormat, BinaryFormat} {
			for _, in := range []string{canary + "\x00", "{" + canary, `"` + canary, canary + " x", "\xff" + canary} {
				_, err := Canonical(typ, format, []byte(in))
				if err == nil {
					continue
				}
				pe := pgerr.As(err)
				if pe == nil {
					t.Fatalf("%s: %T is not a *pgerr.Error", typ, err)
				}
				if cls := pe.Code.Class(); cls != "22" && cls != "54" {
					t.Errorf("%s: SQLSTATE %s is not a data exception", typ, pe.Code)
				}
				wrapped := WithColumn(err, "public.patients.ssn")
				all := wrapped.Error() + pgerr.As(wrapped).Detail + pgerr.As(wrapped).Hint
				if strings.Contains(all, canary) || strings.Contains(all, "6789") {
					t.Errorf("%s: error echoes the value: %s", typ, all)
				}
				if !strings.Contains(wrapped.Error(), "public.patients.ssn") {
					t.Errorf("WithColumn lost the column: %s", wrapped)
				}
			}
		}
	}
	if _, err := Canonical("money", TextFormat, []byte("1")); pgerr.CodeOf(err) != pgerr.Internal {
		t.Errorf("unknown type: %v", err)
	}
	if _, err := Encode("date", BinaryFormat, []byte("not a date")); pgerr.CodeOf(err) != pgerr.DataCorrupted {
		t.Errorf("non-canonical stored value: %v", err)
	}
}

// TestSessionTimeZone compares timestamptz input without an offset, and
// text output, with a server session in America/New_York, including the
// spring-forward gap and the ambiguous fall-back hour.
func TestSessionTimeZone(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	conn := serverConn(t, "timezone=America/New_York", "datestyle=ISO")
	c := Codec{TimeZone: ny}
	for _, in := range []string{"2020-01-02 03:04:05", "2020-07-02 03:04:05.5", "2018-03-11 02:30:00", "2018-11-04 01:30:00",
		"1850-01-01 00:00:00", "2020-01-02 03:04:05+02", "infinity"} {
		srv := serverEval(t, conn, "timestamptz", in)
		if srv.err != nil {
			t.Fatalf("%s: %v", in, srv.err)
		}
		want, err := Canonical("timestamptz", BinaryFormat, srv.binary)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Canonical("timestamptz", TextFormat, []byte(in))
		if err != nil || string(got) != string(want) {
			t.Errorf("%s in New York: canonical %q, %v; server's instant %q", in, got, err, want)
		}
		out, err := c.Encode("timestamptz", TextFormat, want)
		if err != nil || string(out) != srv.text {
			t.Errorf("%s: text output %q, %v; server %q", in, out, err, srv.text)
		}
	}
}

func TestArrays(t *testing.T) {
	ctx := context.Background()
	conn := serverConn(t, "timezone=UTC")
	got, err := CanonicalArray("date", TextFormat, []byte(`{1980-1-2,NULL, "1980-01-03" ,"null"}`))
	if err == nil || pgerr.CodeOf(err) != pgerr.InvalidDatetimeFormat {
		t.Errorf(`"null" quoted is a string, not NULL, and not a date: %q %v`, got, err)
	}
	got, err = CanonicalArray("date", TextFormat, []byte(`{1980-1-2,NULL, "1980-01-03" }`))
	if err != nil || len(got) != 3 || string(got[0]) != "1980-01-02" || got[1] != nil || string(got[2]) != "1980-01-03" {
		t.Fatalf("text array: %q %v", got, err)
	}
	// Binary arrays as the server (and pgx) send them, two-dimensional too.
	res := conn.PgConn().ExecParams(ctx, "SELECT ARRAY['1980-01-02'::date, NULL], ARRAY[[1,2],[3,4]]::int8[], '{}'::uuid[]",
		nil, nil, nil, []int16{1, 1, 1}).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	got, err = CanonicalArray("date", BinaryFormat, res.Rows[0][0])
	if err != nil || len(got) != 2 || string(got[0]) != "1980-01-02" || got[1] != nil {
		t.Errorf("binary date array: %q %v", got, err)
	}
	got, err = CanonicalArray("int8", BinaryFormat, res.Rows[0][1])
	if err != nil || string(bytes.Join(got, []byte(","))) != "1,2,3,4" {
		t.Errorf("2-D binary int8 array flattens as ANY does: %q %v", got, err)
	}
	if got, err = CanonicalArray("uuid", BinaryFormat, res.Rows[0][2]); err != nil || len(got) != 0 {
		t.Errorf("empty array: %q %v", got, err)
	}
	if _, err = CanonicalArray("int4", BinaryFormat, res.Rows[0][1]); pgerr.CodeOf(err) != pgerr.DatatypeMismatch {
		t.Errorf("element type mismatch: %v", err)
	}
	for _, bad := range []string{"{1,2", "1,2", `{"1}`} {
		if _, err := CanonicalArray("int4", TextFormat, []byte(bad)); err == nil {
			t.Errorf("malformed %q accepted", bad)
		}
	}
	// bytea[] in both formats means the same to the server.
	elems := [][]byte{{0x50, 0x48, 0x01, 0x00}, nil, {}, []byte(`"\{},`)}
	var want string
	if err := conn.QueryRow(ctx, "SELECT $1::bytea[]::text", elems).Scan(&want); err != nil {
		t.Fatal(err)
	}
	for _, format := range []int16{TextFormat, BinaryFormat} {
		res := conn.PgConn().ExecParams(ctx, "SELECT $1::bytea[]::text", [][]byte{EncodeByteaArray(elems, format)},
			[]uint32{1001}, []int16{format}, nil).Read()
		if res.Err != nil || string(res.Rows[0][0]) != want {
			t.Errorf("format %d: server reads %v, %v; want %s", format, res.Rows, res.Err, want)
		}
	}
	res = conn.PgConn().ExecParams(ctx, "SELECT cardinality($1::bytea[])", [][]byte{EncodeByteaArray(nil, BinaryFormat)}, []uint32{1001}, []int16{1}, nil).Read()
	if res.Err != nil || string(res.Rows[0][0]) != "0" {
		t.Errorf("empty bytea[]: %v %v", res.Rows, res.Err)
	}
}

func TestBytea(t *testing.T) {
	ctx := context.Background()
	conn := serverConn(t)
	val := []byte("PH\x01\x00\xff'\\\"")
	for _, lit := range []string{ByteaLiteral(val), ByteaEscapeLiteral(val)} {
		var got []byte
		if err := conn.QueryRow(ctx, "SELECT "+lit, pgx.QueryExecModeSimpleProtocol).Scan(&got); err != nil || !bytes.Equal(got, val) {
			t.Errorf("%s: %x %v", lit, got, err)
		}
	}
	if _, err := conn.Exec(ctx, "SET standard_conforming_strings = off"); err != nil {
		t.Fatal(err)
	}
	rs, err := conn.PgConn().Exec(ctx, "SELECT "+ByteaEscapeLiteral(val)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeBytea(rs[0].Rows[0][0], TextFormat); err != nil || !bytes.Equal(got, val) {
		t.Errorf("escape literal with standard_conforming_strings off: %x %v", got, err)
	}
	for _, output := range []string{"hex", "escape"} {
		if _, err := conn.Exec(ctx, "SET bytea_output = "+output); err != nil {
			t.Fatal(err)
		}
		res := conn.PgConn().ExecParams(ctx, "SELECT $1::bytea", [][]byte{val}, []uint32{17}, []int16{1}, []int16{0}).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		dec, err := DecodeBytea(res.Rows[0][0], TextFormat)
		if err != nil || !bytes.Equal(dec, val) {
			t.Errorf("bytea_output=%s %q: decoded %x %v", output, res.Rows[0][0], dec, err)
		}
	}
	if string(EncodeBytea([]byte{1, 0xab}, TextFormat)) != `\x01ab` || string(EncodeBytea([]byte{1}, BinaryFormat)) != "\x01" {
		t.Error("EncodeBytea")
	}
	for _, bad := range []string{`\x0`, `\xzz`, `\9`, `\`} {
		if _, err := DecodeBytea([]byte(bad), TextFormat); err == nil {
			t.Errorf("DecodeBytea(%q) accepted", bad)
		}
	}
}

func TestWithColumnLeavesOtherErrorsAlone(t *testing.T) {
	e := errors.New("x")
	if WithColumn(e, "c") != e {
		t.Error("changed a non-pgerr error")
	}
}

func TestCanonicalFromDeclaredType(t *testing.T) {
	be16 := func(v int16) []byte { return []byte{byte(uint16(v) >> 8), byte(v)} }
	be32 := func(v int32) []byte {
		return []byte{byte(uint32(v) >> 24), byte(uint32(v) >> 16), byte(uint32(v) >> 8), byte(v)}
	}
	cases := []struct {
		name     string
		logical  string
		declared uint32
		format   int16
		src      []byte
		want     string
		code     string
	}{
		{"psycopg's binary int2 into an int8 column", "int8", pgtype.Int2OID, BinaryFormat, be16(-4242), "-4242", ""},
		{"binary int4 into an int8 column", "int8", pgtype.Int4OID, BinaryFormat, be32(7), "7", ""},
		{"binary int4 into a numeric column", "numeric", pgtype.Int4OID, BinaryFormat, be32(12), "12", ""},
		{"pgjdbc's varchar into a text column", "text", pgtype.VarcharOID, BinaryFormat, []byte("héllo"), "héllo", ""},
		{"varchar text into a date column", "date", pgtype.VarcharOID, BinaryFormat, []byte("1980-1-2"), "1980-01-02", ""},
		{"binary int8 that overflows int4", "int4", pgtype.Int8OID, BinaryFormat, []byte{0, 0, 0, 1, 0, 0, 0, 0}, "", "22003"},
		{"binary float into numeric is refused", "numeric", pgtype.Float8OID, BinaryFormat, make([]byte, 8), "", "42804"},
		{"an unknown binary type is refused", "text", 600, BinaryFormat, []byte{1}, "", "42804"},
		{"truncated int2", "int8", pgtype.Int2OID, BinaryFormat, []byte{1}, "", "22P03"},
		{"text format ignores the declared type", "int8", pgtype.Int2OID, TextFormat, []byte("00042"), "42", ""},
		{"same declared type takes the plain path", "int4", pgtype.Int4OID, BinaryFormat, be32(-1), "-1", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Codec{}.AppendCanonicalFrom(nil, tc.logical, tc.declared, tc.format, tc.src)
			if tc.code != "" {
				if pgerr.CodeOf(err).String() != tc.code {
					t.Fatalf("err = %v, want SQLSTATE %s", err, tc.code)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

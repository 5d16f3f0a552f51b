package phi

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/rewrite"
)

// The session's allocation-free helpers must give what the codec's
// allocating ones give.

func TestAppendByteaEscapeLiteralIsCodecs(t *testing.T) {
	for _, b := range [][]byte{nil, {0}, []byte("PH\x01abc"), bytes.Repeat([]byte{0xff, 0x10}, 100)} {
		got := string(appendByteaEscapeLiteral([]byte("prefix "), b))
		if want := "prefix " + codec.ByteaEscapeLiteral(b); got != want {
			t.Errorf("%x: got %q, want %q", b, got, want)
		}
	}
}

// TestSealingWipesPlaintext: after a Bind with an array parameter (text
// and binary) and a scalar one, after a literal slot and after COPY FROM
// in text and binary, no plaintext is left in the session's scratch (the
// encoder's, and the buffers that hold the client's value or the
// envelopes).
func TestSealingWipesPlaintext(t *testing.T) {
	keys := testKeys(t)
	s := &session{p: &Proxy{keys: keys}}
	s.params.Store(&settings{})
	col := rewrite.PHIColumn{Ident: "public.patients.ssn", Type: "text", Mode: "deterministic", Key: "public.patients.ssn"}
	ps := &prepared{st: &rewrite.Statement{Params: []rewrite.Param{{Number: 1, Array: true, Column: col}, {Number: 2, Column: col}}}}
	binArray := []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 11, '9', '8', '7', '-', '6', '5', '-', '4', '3', '2', '1'}
	for _, bind := range []*pgproto3.Bind{
		{Parameters: [][]byte{[]byte(`{"987-65-4321",NULL}`), []byte("987-65-4321")}},
		{ParameterFormatCodes: []int16{codec.BinaryFormat}, Parameters: [][]byte{binArray, []byte("987-65-4321")}},
	} {
		fwd, err := s.encryptParams(ps, bind)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range fwd.Parameters {
			if bytes.Contains(v, []byte("987-65-4321")) {
				t.Fatalf("parameter %d sent with its plaintext", i+1)
			}
		}
		if !s.enc.Wiped() {
			t.Fatal("plaintext left in the session's encoder after a Bind with an array parameter")
		}
	}
	for _, sl := range []rewrite.Slot{{Text: "987-65-4321", Column: col}, {Text: `{"987-65-4321"}`, Array: true, Column: col}} {
		lit, err := s.appendSlot(nil, &sl)
		if err != nil || bytes.Contains(lit, []byte("987-65-4321")) {
			t.Fatalf("slot: %q, %v", lit, err)
		}
		if !s.enc.Wiped() || bytes.Contains(s.cbuf[:cap(s.cbuf)], []byte("987-65-4321")) {
			t.Fatal("plaintext left in the session's scratch after a literal")
		}
	}
	for _, f := range []copyFormat{textFormat, csvFormat} {
		c := testStream(t, keys, f, true, "id", "ssn*")
		row := "1\t987-65-4321\n"
		if f.csv {
			row = "1,987-65-4321\n"
		}
		out, err := feedAll(c, []byte(row))
		if err != nil || bytes.Contains(out, []byte("987-65-4321")) {
			t.Fatalf("COPY: %q, %v", out, err)
		}
		if !c.enc.Wiped() || bytes.Contains(c.val[:cap(c.val)], []byte("987-65-4321")) {
			t.Fatal("plaintext left in the COPY stream's scratch")
		}
	}
	c := testStream(t, keys, binaryFormat, true, "a", "ssn*", "b")
	out, err := feedAll(c, binaryStream([3][]byte{[]byte("1"), []byte("987-65-4321"), nil}), nil)
	if err != nil || bytes.Contains(out, []byte("987-65-4321")) {
		t.Fatalf("binary COPY: %q, %v", out, err)
	}
	if !c.enc.Wiped() {
		t.Fatal("plaintext left in the binary COPY stream's encoder")
	}
}

package column

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
)

// testCipher makes a file KEK and a keyset for one column key in mode and
// returns its cipher.
func testCipher(t testing.TB, mode string) *crypto.Cipher {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "phiproxy.yaml")
	doc := "listen: 127.0.0.1:6432\nupstream: {address: 127.0.0.1:5432, sslmode: disable}\ncatalog_dsn: postgres://cat@127.0.0.1/db\n" +
		"phi:\n  public.t:\n    c: {type: text, mode: " + mode + "}\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := crypto.InitKeys(ctx, cfg, crypto.Options{}); err != nil {
		t.Fatal(err)
	}
	ring, err := crypto.Open(ctx, cfg, crypto.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ring.Cipher("public.t.c")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// samples are client text values of every logical type (and of types
// with a modifier) with their canonical forms.
var samples = []struct{ typ, in, canon string }{
	{"text", "Jane Q. Public ✓", "Jane Q. Public ✓"},
	{"varchar", "123-45-6789", "123-45-6789"},
	{"varchar(5)", "abc", "abc"},
	{"bpchar(4)", "ab", "ab  "},
	{"int4", " 007", "7"},
	{"int8", "-9223372036854775808", "-9223372036854775808"},
	{"bool", "yes", "t"},
	{"uuid", "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
	{"numeric", "1.50", "1.5"},
	{"numeric(6,2)", "3.14159", "3.14"},
	{"date", "1980-1-2", "1980-01-02"},
	{"timestamp", "2026-01-02T03:04:05.120", "2026-01-02 03:04:05.12"},
	{"timestamp(0)", "2026-01-02 03:04:05.6", "2026-01-02 03:04:06"},
	{"timestamptz", "2026-01-02 03:04:05+02", "2026-01-02 01:04:05+00"},
	{"jsonb", `{"b":1.0, "a":[true,null]}`, `{"a": [true, null], "b": 1}`},
}

// TestRoundTrip seals every logical type from text and from binary and
// opens it into both formats: the value comes back as its canonical
// form, a deterministic key gives the same envelope for both inputs, and
// the plaintext scratch is wiped after every call.
func TestRoundTrip(t *testing.T) {
	covered := map[string]bool{}
	for _, mode := range []string{config.ModeDeterministic, config.ModeRandomized} {
		cipher := testCipher(t, mode)
		for _, s := range samples {
			covered[config.BaseType(s.typ)] = true
			col := Column{Ident: "public.t.c", Type: s.typ, Cipher: cipher}
			bin, err := codec.Encode(s.typ, codec.BinaryFormat, []byte(s.canon))
			if err != nil {
				t.Fatalf("%s: binary form of %q: %v", s.typ, s.canon, err)
			}
			var e Encoder
			assign := codec.Coercion{Assign: true}
			fromText, err := e.AppendSeal([]byte("prefix"), col, Input{Format: codec.TextFormat, Coercion: assign}, []byte(s.in))
			if err != nil || !bytes.HasPrefix(fromText, []byte("prefix")) {
				t.Fatalf("%s %s: seal text %q: %v", mode, s.typ, s.in, err)
			}
			fromText = fromText[len("prefix"):]
			fromBin, err := e.AppendSeal(nil, col, Input{Format: codec.BinaryFormat, Declared: codec.OID(s.typ), Coercion: assign}, bin)
			if err != nil {
				t.Fatalf("%s %s: seal binary: %v", mode, s.typ, err)
			}
			fromString, err := e.AppendSealString(nil, col, Input{Format: codec.TextFormat, Coercion: assign}, s.in)
			if err != nil {
				t.Fatalf("%s %s: seal string: %v", mode, s.typ, err)
			}
			if !e.Wiped() {
				t.Fatalf("%s %s: plaintext left in the encoder's scratch", mode, s.typ)
			}
			if !crypto.IsEnvelope(fromText) || len(s.canon) > 4 && bytes.Contains(fromText, []byte(s.canon)) {
				t.Fatalf("%s %s: not an envelope, or the plaintext shows", mode, s.typ)
			}
			if mode == config.ModeDeterministic && (!bytes.Equal(fromText, fromBin) || !bytes.Equal(fromText, fromString)) {
				t.Errorf("%s: text, binary and string input seal differently under a deterministic key", s.typ)
			}
			for _, env := range [][]byte{fromText, fromBin, fromString} {
				gotText, err := e.AppendOpen(nil, col, codec.TextFormat, env)
				if err != nil || string(gotText) != s.canon {
					t.Errorf("%s %s: open text = %q, %v; want %q", mode, s.typ, gotText, err, s.canon)
				}
				gotBin, err := e.AppendOpen([]byte("x"), col, codec.BinaryFormat, env)
				if err != nil || !bytes.Equal(gotBin, append([]byte("x"), bin...)) {
					t.Errorf("%s %s: open binary = %x, %v; want %x", mode, s.typ, gotBin, err, bin)
				}
			}
		}
	}
	for _, typ := range codec.Types() {
		if !covered[typ] {
			t.Errorf("logical type %s has no round-trip sample", typ)
		}
	}
}

// TestTimeZone: a timestamptz opens in the session's TimeZone and is
// sealed from it as the same instant.
func TestTimeZone(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skip("no tzdata:", err)
	}
	col := Column{Ident: "public.t.c", Type: "timestamptz", Cipher: testCipher(t, config.ModeDeterministic)}
	e := Encoder{Codec: codec.Codec{TimeZone: ny}}
	env, err := e.AppendSeal(nil, col, Input{Format: codec.TextFormat}, []byte("2026-07-01 08:00:00"))
	if err != nil {
		t.Fatal(err)
	}
	utc, err := (&Encoder{}).AppendSeal(nil, col, Input{Format: codec.TextFormat}, []byte("2026-07-01 12:00:00+00"))
	if err != nil || !bytes.Equal(env, utc) {
		t.Fatalf("the same instant seals differently in two zones: %v", err)
	}
	got, err := e.AppendOpen(nil, col, codec.TextFormat, env)
	if err != nil || string(got) != "2026-07-01 08:00:00-04" {
		t.Fatalf("open in New York = %q, %v", got, err)
	}
}

// TestArrayWipesPlaintext: sealing an array (text and binary) leaves
// every plaintext the encoder made zero — its canonical forms and the
// elements the text parser unescaped — and yields one envelope per
// element, nil for NULL, equal to the scalar envelope.
func TestArrayWipesPlaintext(t *testing.T) {
	cipher := testCipher(t, config.ModeDeterministic)
	col := Column{Ident: "public.t.c", Type: "varchar(20)", Cipher: cipher}
	var e Encoder
	binArray := []byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 4, 19, 0, 0, 0, 3, 0, 0, 0, 1, // 1 dim, NULLs, varchar, 3 from 1
		0, 0, 0, 11, '1', '2', '3', '-', '4', '5', '-', '6', '7', '8', '9',
		0xff, 0xff, 0xff, 0xff,
		0, 0, 0, 4, 'j', 'a', 'n', 'e'}
	for _, tc := range []struct {
		name   string
		format int16
		src    []byte
	}{
		{"text", codec.TextFormat, []byte(`{"123-45-6789",NULL,"ja\\ne"}`)},
		{"binary", codec.BinaryFormat, binArray},
	} {
		elems, err := e.SealArray(col, Input{Format: tc.format}, tc.src)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cap(e.plain) == 0 {
			t.Fatalf("%s: the canonical forms were not made in the encoder's scratch", tc.name)
		}
		if !e.Wiped() {
			t.Fatalf("%s: plaintext left in the encoder's scratch after an array", tc.name)
		}
		if len(elems) != 3 || elems[1] != nil {
			t.Fatalf("%s: got %d elements, want 3 with a NULL second", tc.name, len(elems))
		}
		one, err := e.AppendSeal(nil, col, Input{Format: codec.TextFormat}, []byte("123-45-6789"))
		if err != nil || !bytes.Equal(one, elems[0]) {
			t.Errorf("%s: an element seals differently from the scalar: %v", tc.name, err)
		}
	}
	// A value that does not canonicalise leaves no plaintext either.
	if _, err := e.SealArray(Column{Ident: "public.t.c", Type: "int4", Cipher: cipher}, Input{Format: codec.TextFormat}, []byte("{1,two}")); pgerr.As(err) == nil {
		t.Fatalf("want an error for a bad element, got %v", err)
	}
	if !e.Wiped() {
		t.Fatal("plaintext left in the encoder's scratch after a failed array")
	}
}

// TestScalarWipesOnGrowthAndError: when the scratch grows, and when a
// value fails, no plaintext is left behind.
func TestScalarWipesOnGrowthAndError(t *testing.T) {
	cipher := testCipher(t, config.ModeRandomized)
	col := Column{Ident: "public.t.c", Type: "text", Cipher: cipher}
	var e Encoder
	for _, n := range []int{1, 100, 10000} {
		if _, err := e.AppendSeal(nil, col, Input{Format: codec.TextFormat}, bytes.Repeat([]byte("s"), n)); err != nil {
			t.Fatal(err)
		}
		if !e.Wiped() {
			t.Fatalf("size %d: plaintext left after the scratch grew", n)
		}
	}
	if _, err := e.AppendSeal(nil, Column{Ident: "public.t.c", Type: "varchar(2)", Cipher: cipher}, Input{Format: codec.TextFormat, Coercion: codec.Coercion{Assign: true}}, []byte("secret")); err == nil {
		t.Fatal("want 22001 for a too-long varchar(2)")
	} else if bytes.Contains([]byte(err.Error()), []byte("secret")) {
		t.Fatal("the error shows the value")
	}
	if !e.Wiped() {
		t.Fatal("plaintext left after a failed value")
	}
	if _, err := e.AppendSeal(nil, Column{Ident: "public.t.c", Type: "text"}, Input{}, []byte("secret")); err == nil {
		t.Fatal("want an error without a key")
	}
}

// TestAllocs: sealing and opening a scalar into warm buffers allocates
// only what Tink does (the proxy's hot path).
func TestAllocs(t *testing.T) {
	col := Column{Ident: "public.t.c", Type: "varchar(20)", Cipher: testCipher(t, config.ModeDeterministic)}
	var e Encoder
	dst := make([]byte, 0, 256)
	in := Input{Format: codec.TextFormat, Coercion: codec.Coercion{Assign: true}}
	env, _ := e.AppendSeal(nil, col, in, []byte("123-45-6789"))
	base := testing.AllocsPerRun(50, func() { _, _ = col.Cipher.AppendEncrypt(dst[:0], []byte("123-45-6789")) })
	if n := testing.AllocsPerRun(50, func() { _, _ = e.AppendSealString(dst[:0], col, in, "123-45-6789") }); n > base {
		t.Errorf("AppendSealString: %v allocations, Tink alone %v", n, base)
	}
	base = testing.AllocsPerRun(50, func() { _, _ = col.Cipher.Decrypt(env) })
	if n := testing.AllocsPerRun(50, func() { _, _ = e.AppendOpen(dst[:0], col, codec.TextFormat, env) }); n > base {
		t.Errorf("AppendOpen: %v allocations, Tink alone %v", n, base)
	}
}

// DecodeStored must give what codec.DecodeBytea gives.
func TestDecodeStoredIsCodecs(t *testing.T) {
	var e Encoder
	for _, tc := range []struct {
		v      string
		format int16
	}{
		{`\x`, codec.TextFormat},
		{`\x504801ff`, codec.TextFormat},
		{`\x504801FF`, codec.TextFormat},
		{`\x50 48 01`, codec.TextFormat}, // byteain skips white space
		{`\x5048 01`, codec.TextFormat},
		{`\x50480`, codec.TextFormat},  // odd: an error
		{`\x5048zz`, codec.TextFormat}, // not hex: an error
		{`PH\001`, codec.TextFormat},   // escape form
		{"\\x5048", codec.BinaryFormat},
	} {
		got, gotErr := e.DecodeStored([]byte(tc.v), tc.format)
		want, wantErr := codec.DecodeBytea([]byte(tc.v), tc.format)
		if (gotErr != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Errorf("%q (format %d): got %x, %v; want %x, %v", tc.v, tc.format, got, gotErr, want, wantErr)
		}
	}
}

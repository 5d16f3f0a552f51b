package crypto

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand"
	"strings"
	"testing"
)

// byteaEscape is PostgreSQL's byteaout with bytea_output = 'escape'.
func byteaEscape(b []byte) string {
	return escapeOctal(b, func(c byte) bool { return c >= 0x20 && c <= 0x7e })
}

// encodeEscape is PostgreSQL's encode(…, 'escape').
func encodeEscape(b []byte) string {
	return escapeOctal(b, func(c byte) bool { return c != 0 && c < 0x80 })
}

// escapeOctal doubles backslashes, keeps the bytes verbatim says and
// writes every other byte as \ooo: the two escape spellings differ only
// in which bytes they keep.
func escapeOctal(b []byte, verbatim func(byte) bool) string {
	var s strings.Builder
	for _, c := range b {
		switch {
		case c == '\\':
			s.WriteString(`\\`)
		case verbatim(c):
			s.WriteByte(c)
		default:
			fmt.Fprintf(&s, `\%03o`, c)
		}
	}
	return s.String()
}

func TestRecognizer(t *testing.T) {
	r := NewRecognizer(0x2a, 0xdeadbeef, 0x2242225c)
	// An envelope whose payload holds the bytes quoting changes.
	env := append([]byte("PH\x01\x01\x00\x00\x00\x2a"), []byte("\\\"\x00\xff{}(),a\n\t\r\x01\x02z9")...)
	env = append(env, bytes.Repeat([]byte{0x9c}, 20)...)
	other := append([]byte("PH\x01\x01\x12\x34\x56\x78"), env[8:]...) // a key not loaded
	quoted := append([]byte("PH\x01\x01\x22\x42\x22\x5c"), env[8:]...)
	hx := hex.EncodeToString(env)
	esc := byteaEscape(env)
	b64 := base64.StdEncoding.EncodeToString(env)
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"raw bytes", string(env), true},
		{"raw bytes after other bytes", "xyz" + string(env), true},
		{"raw bytes one short of the shortest envelope", string(env[:MinEnvelopeLen-1]), false},
		{"raw bytes of a key not loaded", string(other), false},
		{"bytea hex output", `\x` + hx, true},
		{"bytea hex output in upper case", `\X` + strings.ToUpper(hx), true},
		{"encode(…, 'hex')", hx, true},
		{"an array literal", `{"\\x` + hx + `"}`, true},
		{"a record literal", `(1,"\\x` + hx + `")`, true},
		{"json", `{"a": "\\x` + hx + `"}`, true},
		{"hex one digit short", `\x` + hx[:2*MinEnvelopeLen-1], false},
		{"hex of a key not loaded", `\x` + hex.EncodeToString(other), false},
		{"bytea escape output", esc, true},
		{"escape output in an array literal", `{"` + strings.ReplaceAll(strings.ReplaceAll(esc, `\`, `\\`), `"`, `\"`) + `"}`, true},
		{"escape output quoted twice", strings.ReplaceAll(esc, `\`, `\\\\`), true},
		// record_out doubles backslashes and double quotes; the key id
		// (loaded: 0x2242225c) may hold either.
		{"escape output in a record literal", `(1,"` + strings.ReplaceAll(strings.ReplaceAll(byteaEscape(quoted), `\`, `\\`), `"`, `""`) + `")`, true},
		{"escape output in an array in a record literal", `("{""` + strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(byteaEscape(quoted), `\`, `\\`), `"`, `\"`), `\`, `\\`), `"`, `""`) + `""}")`, true},
		{"escape output of a key not loaded", byteaEscape(other), false},
		{"encode(…, 'escape')", encodeEscape(env), true},
		{"encode(…, 'escape') in an array literal", `{"` + strings.ReplaceAll(strings.ReplaceAll(encodeEscape(env), `\`, `\\`), `"`, `\"`) + `"}`, true},
		{"encode(…, 'escape') of a key not loaded", encodeEscape(other), false},
		{"base64", b64, true},
		{"base64 with encode()'s line breaks", b64[:10] + "\n" + b64[10:30] + "\n" + b64[30:], true},
		{"base64 of a key not loaded", base64.StdEncoding.EncodeToString(other), false},
		{"part number", "part number X5048012 and X504801", false},
		{"'PH'||chr(1)", "PH\x01", false},
		{"a uuid starting 504801", "50480101-0000-002a-0000-000000000000", false},
		{"the bare text header", `\x504801`, false},
		{"PHONE", "PHONE PH\\001\\001 \\x50480101", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.Contains([]byte(tt.in)); got != tt.want {
				t.Errorf("Contains(%q) = %v, want %v", tt.in, got, tt.want)
			}
			if tt.want && !MayContain([]byte(tt.in)) {
				t.Errorf("MayContain(%q) = false", tt.in)
			}
		})
	}
	if NewRecognizer().Contains(env) || (*Recognizer)(nil).Contains(env) {
		t.Error("a recognizer without keys recognised an envelope")
	}
}

func TestRecognizerRedact(t *testing.T) {
	r := NewRecognizer(0x2a)
	env := append([]byte("PH\x01\x01\x00\x00\x00\x2a"), bytes.Repeat([]byte{0xab}, 40)...)
	hx := hex.EncodeToString(env)
	for in, want := range map[string]string{
		`Key (ssn)=(\x` + hx + `) already exists.`:                    `Key (ssn)=(<encrypted>) already exists.`,
		`Failing row contains (1, \x` + hx + `, null, \x` + hx + `).`: `Failing row contains (1, <encrypted>, null, <encrypted>).`,
		`{"\\x` + hx + `"}`: `{"<encrypted>"}`,
		`Key (ssn)=(` + byteaEscape(env) + `) already exists.`: `Key (ssn)=(<encrypted>`,
		`nothing here \x504801`:                                `nothing here \x504801`,
	} {
		got, changed := r.Redact(in)
		if got != want || changed != (in != want) {
			t.Errorf("Redact(%q) = %q, %v; want %q", in, got, changed, want)
		}
	}
}

// TestRecognizerInnocent: random values never match (the expected count
// is about 2^-40 here).
func TestRecognizerInnocent(t *testing.T) {
	r := NewRecognizer(0x2a, 0x01010101, 0x30303030)
	rng := rand.New(rand.NewSource(1))
	b := make([]byte, 8<<20)
	rng.Read(b)
	// Plant the header everywhere a careless net would trip.
	for i := 0; i+8 < len(b); i += 4096 {
		copy(b[i:], "PH\x01\x01")
		copy(b[i+2048:], "504801")
	}
	if r.Contains(b) {
		t.Fatal("random bytes taken for an envelope")
	}
}

// FuzzRecognizer: an envelope of a loaded key put in any form between
// arbitrary bytes is found, and nothing Redact leaves is an envelope
// (not even its first 8 bytes).
func FuzzRecognizer(f *testing.F) {
	f.Add([]byte("abc"), []byte("def"), []byte("payload that is long enough"), uint8(0))
	f.Add([]byte(`\\`), []byte("PH"), []byte{0, '\\', '"', 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, uint8(3))
	f.Add([]byte("50480"), []byte("x"), bytes.Repeat([]byte{'P'}, 16), uint8(1))
	r := NewRecognizer(0x2a, 0x5c22015c)
	f.Fuzz(func(t *testing.T, pre, post, payload []byte, form uint8) {
		if len(payload) < 16 {
			return
		}
		id := []byte{0, 0, 0, 0x2a}
		if form&0x80 != 0 {
			id = []byte{0x5c, 0x22, 0x01, 0x5c} // backslash, quote and 0x01 in the key id
		}
		env := append(append([]byte("PH\x01\x01"), id...), payload...)
		var enc string
		switch form % 6 {
		case 0:
			enc = string(env)
		case 1:
			enc = `\x` + hex.EncodeToString(env)
		case 2:
			enc = byteaEscape(env)
		case 3:
			enc = encodeEscape(env)
		case 4:
			enc = base64.StdEncoding.EncodeToString(env)
		case 5:
			enc = `{"` + strings.ReplaceAll(strings.ReplaceAll(byteaEscape(env), `\`, `\\`), `"`, `\"`) + `"}`
		}
		v := append(append(append([]byte(nil), pre...), enc...), post...)
		if !r.Contains(v) {
			t.Fatalf("form %d not found in %q", form%6, v)
		}
		red, changed := r.Redact(string(v))
		if !changed {
			t.Fatalf("form %d: nothing redacted in %q", form%6, v)
		}
		if _, _, ok := r.find([]byte(red), prefixLen); ok {
			t.Fatalf("form %d: Redact left an envelope: %q", form%6, red)
		}
	})
}

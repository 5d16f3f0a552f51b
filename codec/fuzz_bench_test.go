package codec

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// FuzzCanonical: Canonical never panics, and whatever it accepts is a
// fixed point that survives Encode in both formats:
// Canonical(f, Encode(f, Canonical(x))) == Canonical(x).
func FuzzCanonical(f *testing.F) {
	for i, typ := range Types() {
		for _, in := range diffInputs[typ] {
			f.Add(uint8(i), false, []byte(in))
		}
	}
	f.Add(uint8(6), true, []byte{0, 1, 0, 0, 0, 0, 0, 2, 0, 1})
	f.Fuzz(func(t *testing.T, ti uint8, binary bool, data []byte) {
		typ := Types()[int(ti)%len(Types())]
		format := TextFormat
		if binary {
			format = BinaryFormat
		}
		canon, err := Canonical(typ, format, data)
		if err != nil {
			return
		}
		for _, out := range []int16{TextFormat, BinaryFormat} {
			enc, err := Encode(typ, out, canon)
			if err != nil {
				t.Fatalf("%s: Encode(%d, %q): %v", typ, out, canon, err)
			}
			again, err := Canonical(typ, out, enc)
			if err != nil || string(again) != string(canon) {
				t.Fatalf("%s format %d: %q → %q → %q, %v", typ, out, canon, enc, again, err)
			}
		}
		_, _ = CanonicalArray(typ, format, data)
	})
}

// TestTextArraysAgainstPostgres compares the text array splitter with
// array_in.
func TestTextArraysAgainstPostgres(t *testing.T) {
	conn := serverConn(t)
	ctx := context.Background()
	for _, in := range []string{`{1,2}`, `{ 1 , 2 }`, `{"1", NULL,"2" }`, `[0:1]={3,4}`, `{{1,2},{3,4}}`, `{{1,2},{3}}`,
		`{}`, `{,}`, `{1,}`, `{1 2}`, `{"1"x}`, `{1} x`, `{null,NULL}`, `{a\,b,"c\"d"}`, ` { x } `, `{{}}`, `{"a" "b"}`} {
		for _, typ := range []string{"int4", "text"} {
			var want string
			var srvErr error
			res := conn.PgConn().ExecParams(ctx, fmt.Sprintf("SELECT array_to_string(array(SELECT coalesce(e::text, '<NULL>') FROM unnest($1::text::%s[]) e), '|')", typ),
				[][]byte{[]byte(in)}, []uint32{25}, nil, nil).Read()
			if res.Err != nil {
				srvErr = res.Err
			} else {
				want = string(res.Rows[0][0])
			}
			elems, err := CanonicalArray(typ, TextFormat, []byte(in))
			var parts []string
			for _, e := range elems {
				if e == nil {
					parts = append(parts, "<NULL>")
				} else {
					parts = append(parts, string(e))
				}
			}
			got := strings.Join(parts, "|")
			switch {
			case srvErr != nil && err == nil:
				t.Errorf("%s %q: server refuses (%v), codec gives %q", typ, in, srvErr, got)
			case srvErr == nil && err != nil:
				t.Errorf("%s %q: server gives %q, codec refuses: %v", typ, in, want, err)
			case srvErr == nil && got != want:
				t.Errorf("%s %q: codec %q, server %q", typ, in, got, want)
			}
		}
	}
}

var benchValues = map[string]string{
	"text": "Jane Q. Public, 12 Main St", "varchar": "A+", "int4": "123456", "int8": "-1234567890123", "bool": "true",
	"uuid": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "numeric": "12345.6789", "date": "1980-1-2",
	"timestamp": "2020-01-02 03:04:05.123456", "timestamptz": "2020-01-02 03:04:05.123456+02",
	"jsonb": `{"allergies": ["penicillin", "latex"], "bp": {"sys": 120, "dia": 80}}`,
}

func BenchmarkCanonical(b *testing.B) {
	for _, typ := range Types() {
		canon, err := Canonical(typ, TextFormat, []byte(benchValues[typ]))
		if err != nil {
			b.Fatal(err)
		}
		bin, _ := Encode(typ, BinaryFormat, canon)
		for _, f := range []struct {
			name   string
			format int16
			in     []byte
		}{{"text", TextFormat, []byte(benchValues[typ])}, {"binary", BinaryFormat, bin}} {
			b.Run(typ+"/"+f.name, func(b *testing.B) {
				b.ReportAllocs()
				buf := make([]byte, 0, 256)
				for b.Loop() {
					if _, err := (Codec{}).AppendCanonical(buf[:0], typ, f.format, f.in); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, typ := range Types() {
		canon, err := Canonical(typ, TextFormat, []byte(benchValues[typ]))
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range []struct {
			name   string
			format int16
		}{{"text", TextFormat}, {"binary", BinaryFormat}} {
			b.Run(typ+"/"+f.name, func(b *testing.B) {
				b.ReportAllocs()
				buf := make([]byte, 0, 256)
				for b.Loop() {
					if _, err := (Codec{}).AppendEncode(buf[:0], typ, f.format, canon); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

package phi

import (
	"bytes"
	"testing"

	"github.com/phiproxy/phiproxy/codec"
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

func TestDecodeByteaIsCodecs(t *testing.T) {
	s := &session{}
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
		got, gotErr := s.decodeBytea([]byte(tc.v), tc.format)
		want, wantErr := codec.DecodeBytea([]byte(tc.v), tc.format)
		if (gotErr != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Errorf("%q (format %d): got %x, %v; want %x, %v", tc.v, tc.format, got, gotErr, want, wantErr)
		}
	}
}

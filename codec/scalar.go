package codec

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"unicode/utf8"

	"github.com/phiproxy/phiproxy/pgerr"
)

// checkText applies what PostgreSQL checks before any input function sees
// a text value: valid server encoding (UTF8) and no NUL byte.
func checkText(src []byte) error {
	for i := 0; i < len(src); i++ {
		if src[i] == 0 {
			return pgerr.New(pgerr.CharacterNotInRepertoire, `invalid byte sequence for encoding "UTF8"`)
		}
		if src[i] >= utf8.RuneSelf {
			if !utf8.Valid(src[i:]) {
				return pgerr.New(pgerr.CharacterNotInRepertoire, `invalid byte sequence for encoding "UTF8"`)
			}
			for _, b := range src[i:] {
				if b == 0 {
					return pgerr.New(pgerr.CharacterNotInRepertoire, `invalid byte sequence for encoding "UTF8"`)
				}
			}
			return nil
		}
	}
	return nil
}

// text, varchar, bpchar: the bytes themselves; a length modifier is applied
// in typmod.go.

func textIn(_ Codec, dst, src []byte) ([]byte, error) {
	if err := checkText(src); err != nil {
		return nil, err
	}
	return append(dst, src...), nil
}

func textRecv(dst, src []byte) ([]byte, error) { return textIn(Codec{}, dst, src) }

func textSend(dst, canon []byte) ([]byte, error) { return append(dst, canon...), nil }

// int4, int8: pg_strtoint32/64 of PostgreSQL 15 (no underscores, no hex).

func parseInt(src []byte, bits int, typ string) (int64, error) {
	if err := checkText(src); err != nil {
		return 0, err
	}
	s, neg := cutSign(skipSpace(src))
	if len(s) == 0 || !isDigit(s[0]) {
		return 0, syntaxErr(typ)
	}
	// Accumulate negatively so that the minimum value fits.
	limit := -(int64(1) << (bits - 1))
	var v int64
	for len(s) > 0 && isDigit(s[0]) {
		d := int64(s[0] - '0')
		if v < limit/10 || (v == limit/10 && d > -(limit%10)) {
			return 0, numRangeErr(typ)
		}
		v = v*10 - d
		s = s[1:]
	}
	if len(skipSpace(s)) != 0 {
		return 0, syntaxErr(typ)
	}
	if !neg {
		if v == limit {
			return 0, numRangeErr(typ)
		}
		v = -v
	}
	return v, nil
}

func int4In(_ Codec, dst, src []byte) ([]byte, error) {
	v, err := parseInt(src, 32, "integer")
	if err != nil {
		return nil, err
	}
	return strconv.AppendInt(dst, v, 10), nil
}

func int8In(_ Codec, dst, src []byte) ([]byte, error) {
	v, err := parseInt(src, 64, "bigint")
	if err != nil {
		return nil, err
	}
	return strconv.AppendInt(dst, v, 10), nil
}

func int4Recv(dst, src []byte) ([]byte, error) {
	if len(src) != 4 {
		return nil, binaryErr("integer")
	}
	return strconv.AppendInt(dst, int64(int32(binary.BigEndian.Uint32(src))), 10), nil
}

func int8Recv(dst, src []byte) ([]byte, error) {
	if len(src) != 8 {
		return nil, binaryErr("bigint")
	}
	return strconv.AppendInt(dst, int64(binary.BigEndian.Uint64(src)), 10), nil
}

func int4Send(dst, canon []byte) ([]byte, error) {
	v, err := strconv.ParseInt(string(canon), 10, 32)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint32(dst, uint32(int32(v))), nil
}

func int8Send(dst, canon []byte) ([]byte, error) {
	v, err := strconv.ParseInt(string(canon), 10, 64)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(dst, uint64(v)), nil
}

// bool: parse_bool_with_len — case-insensitive prefixes of true, false,
// yes, no, at least two letters of on and off, and 1 and 0, trimmed.

func boolIn(_ Codec, dst, src []byte) ([]byte, error) {
	if err := checkText(src); err != nil {
		return nil, err
	}
	v, ok := parseBool(trimSpace(src))
	if !ok {
		return nil, syntaxErr("boolean")
	}
	if v {
		return append(dst, 't'), nil
	}
	return append(dst, 'f'), nil
}

func parseBool(s []byte) (value, ok bool) {
	prefix := func(word string, min int) bool {
		if len(s) < min || len(s) > len(word) {
			return false
		}
		return equalFold(s, word[:len(s)])
	}
	if len(s) == 0 {
		return false, false
	}
	switch lower(s[0]) {
	case 't':
		return true, prefix("true", 1)
	case 'y':
		return true, prefix("yes", 1)
	case 'f':
		return false, prefix("false", 1)
	case 'n':
		return false, prefix("no", 1)
	case 'o':
		if prefix("on", 2) {
			return true, true
		}
		return false, prefix("off", 2)
	case '1':
		return true, len(s) == 1
	case '0':
		return false, len(s) == 1
	}
	return false, false
}

func boolRecv(dst, src []byte) ([]byte, error) {
	if len(src) != 1 {
		return nil, binaryErr("boolean")
	}
	if src[0] != 0 {
		return append(dst, 't'), nil
	}
	return append(dst, 'f'), nil
}

func boolSend(dst, canon []byte) ([]byte, error) {
	switch string(canon) {
	case "t":
		return append(dst, 1), nil
	case "f":
		return append(dst, 0), nil
	}
	return nil, syntaxErr("boolean")
}

// uuid: string_to_uuid — optional braces, 32 hex digits, an optional
// hyphen after any group of four digits, nothing else (no whitespace).

func parseUUID(src []byte) (u [16]byte, ok bool) {
	s := src
	braces := len(s) > 0 && s[0] == '{'
	if braces {
		s = s[1:]
	}
	for i := 0; i < 16; i++ {
		if len(s) < 2 {
			return u, false
		}
		hi, ok1 := Unhex(s[0])
		lo, ok2 := Unhex(s[1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[i] = hi<<4 | lo
		s = s[2:]
		if len(s) > 0 && s[0] == '-' && i%2 == 1 && i < 15 {
			s = s[1:]
		}
	}
	if braces {
		if len(s) == 0 || s[0] != '}' {
			return u, false
		}
		s = s[1:]
	}
	return u, len(s) == 0
}

// Unhex is the value of a hex digit of either case (byteain and COPY
// text read them so).
func Unhex(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}

func appendUUID(dst []byte, u [16]byte) []byte {
	var buf [36]byte
	hex.Encode(buf[0:8], u[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], u[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], u[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], u[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:36], u[10:16])
	return append(dst, buf[:]...)
}

func uuidIn(_ Codec, dst, src []byte) ([]byte, error) {
	u, ok := parseUUID(src)
	if !ok {
		return nil, syntaxErr("uuid")
	}
	return appendUUID(dst, u), nil
}

func uuidRecv(dst, src []byte) ([]byte, error) {
	if len(src) != 16 {
		return nil, binaryErr("uuid")
	}
	return appendUUID(dst, [16]byte(src)), nil
}

func uuidSend(dst, canon []byte) ([]byte, error) {
	u, ok := parseUUID(canon)
	if !ok {
		return nil, syntaxErr("uuid")
	}
	return append(dst, u[:]...), nil
}

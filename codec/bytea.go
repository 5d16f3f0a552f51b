package codec

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/phiproxy/phiproxy/pgerr"
)

// AppendByteaText appends the bytea text output form `\x<hex>`.
func AppendByteaText(dst, b []byte) []byte {
	dst = append(dst, '\\', 'x')
	return hex.AppendEncode(dst, b)
}

// EncodeBytea returns b in bytea's wire format: `\x<hex>` for text, the
// bytes themselves for binary.
func EncodeBytea(b []byte, format int16) []byte {
	if format == BinaryFormat {
		return b
	}
	return AppendByteaText(nil, b)
}

// ByteaLiteral returns b as a SQL literal for the simple protocol:
// '\x<hex>'::bytea. It assumes standard_conforming_strings = on (the
// default); a session that turned it off needs ByteaEscapeLiteral, which
// means the same under both settings.
func ByteaLiteral(b []byte) string {
	out := make([]byte, 0, 2*len(b)+12)
	out = append(out, '\'')
	out = AppendByteaText(out, b)
	out = append(out, "'::bytea"...)
	return string(out)
}

// ByteaEscapeLiteral returns b as E'\\x<hex>'::bytea, valid whatever
// standard_conforming_strings is.
func ByteaEscapeLiteral(b []byte) string {
	out := make([]byte, 0, 2*len(b)+14)
	out = append(out, 'E', '\'', '\\', '\\', 'x')
	out = hex.AppendEncode(out, b)
	out = append(out, "'::bytea"...)
	return string(out)
}

// DecodeBytea parses a bytea value received in format: text output in hex
// (`\x…`, as bytea_output = hex gives) or escape form, or binary.
func DecodeBytea(src []byte, format int16) ([]byte, error) {
	if format == BinaryFormat {
		return src, nil
	}
	if len(src) >= 2 && src[0] == '\\' && src[1] == 'x' {
		out := make([]byte, 0, (len(src)-2)/2)
		s := src[2:]
		for len(s) > 0 {
			if isSpace(s[0]) { // byteain skips whitespace between digit pairs
				s = s[1:]
				continue
			}
			if len(s) < 2 {
				return nil, syntaxErr("bytea")
			}
			hi, ok1 := Unhex(s[0])
			lo, ok2 := Unhex(s[1])
			if !ok1 || !ok2 {
				return nil, syntaxErr("bytea")
			}
			out = append(out, hi<<4|lo)
			s = s[2:]
		}
		return out, nil
	}
	// Escape format: \\ and \ooo; other bytes as is.
	out := make([]byte, 0, len(src))
	for s := src; len(s) > 0; {
		if s[0] != '\\' {
			out = append(out, s[0])
			s = s[1:]
			continue
		}
		switch {
		case len(s) >= 2 && s[1] == '\\':
			out = append(out, '\\')
			s = s[2:]
		case len(s) >= 4 && '0' <= s[1] && s[1] <= '3' && '0' <= s[2] && s[2] <= '7' && '0' <= s[3] && s[3] <= '7':
			out = append(out, (s[1]-'0')<<6|(s[2]-'0')<<3|(s[3]-'0'))
			s = s[4:]
		default:
			return nil, syntaxErr("bytea")
		}
	}
	return out, nil
}

// CanonicalArray decodes an array parameter of logicalType (for
// "col = ANY($1)") in format and returns the canonical form of each
// element, flattened in storage order as ANY sees them; a NULL element is
// returned as nil. The text form follows array_in (pgtype's parser does
// not trim unquoted whitespace as PostgreSQL does); the binary form's
// element type must be the logical type's.
//
// The elements are compared with a column of logicalType (= ANY): its
// modifier is applied as in a comparison (see AppendBound).
func (c Codec) CanonicalArray(logicalType string, format int16, src []byte) ([][]byte, error) {
	return c.CanonicalArrayBound(logicalType, Coercion{}, format, src)
}

// CanonicalArrayBound is CanonicalArray with an explicit cast applied to
// every element (co.Cast, from a cast such as '{a,b}'::varchar(2)[]).
func (c Codec) CanonicalArrayBound(logicalType string, co Coercion, format int16, src []byte) ([][]byte, error) {
	raw, err := SplitArray(logicalType, format, src)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(raw))
	for i, e := range raw {
		if e == nil {
			continue
		}
		if out[i], err = c.AppendBound(nil, logicalType, co, 0, format, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SplitArray splits an array value of logicalType in format into its
// elements as the client wrote them (nil for NULL), flattened in storage
// order as ANY sees them: text with array_in's rules, binary with
// array_send's (the element type must be logicalType's). A text
// element is a fresh copy (unquoted, unescaped), which the caller owns
// and should wipe; a binary element points into src.
func SplitArray(logicalType string, format int16, src []byte) ([][]byte, error) {
	t, err := lookup(logicalType)
	if err != nil {
		return nil, err
	}
	var raw [][]byte
	switch format {
	case TextFormat:
		if err := checkText(src); err != nil {
			return nil, err
		}
		var ok bool
		if raw, ok = splitTextArray(src); !ok {
			return nil, pgerr.Newf(pgerr.InvalidTextRepresentation, "malformed array literal for type %s[]", t.name)
		}
	case BinaryFormat:
		raw, err = splitBinaryArray(src, t)
		if err != nil {
			return nil, err
		}
	default:
		return nil, pgerr.Newf(pgerr.ProtocolViolation, "unsupported format code: %d", format)
	}
	return raw, nil
}

// CanonicalArray is Codec{}.CanonicalArray.
func CanonicalArray(logicalType string, format int16, src []byte) ([][]byte, error) {
	return Codec{}.CanonicalArray(logicalType, format, src)
}

// splitBinaryArray splits array_send's format into element values (nil for
// NULL), flattening dimensions.
func splitBinaryArray(src []byte, t *typeInfo) ([][]byte, error) {
	bad := binaryErr(t.name + "[]")
	if len(src) < 12 {
		return nil, bad
	}
	ndim := int32(binary.BigEndian.Uint32(src))
	elemOID := binary.BigEndian.Uint32(src[8:])
	if ndim < 0 || ndim > 6 {
		return nil, bad
	}
	if elemOID != t.oid {
		return nil, pgerr.Newf(pgerr.DatatypeMismatch, "binary array has element type OID %d instead of %s", elemOID, t.name)
	}
	s := src[12:]
	n := int64(1)
	if ndim == 0 {
		n = 0
	}
	for range ndim {
		if len(s) < 8 {
			return nil, bad
		}
		d := int32(binary.BigEndian.Uint32(s))
		if d < 0 {
			return nil, bad
		}
		n *= int64(d)
		if n > int64(len(src)) { // each element takes at least 4 bytes
			return nil, bad
		}
		s = s[8:]
	}
	out := make([][]byte, 0, n)
	for range n {
		if len(s) < 4 {
			return nil, bad
		}
		l := int32(binary.BigEndian.Uint32(s))
		s = s[4:]
		if l == -1 {
			out = append(out, nil)
			continue
		}
		if l < 0 || int(l) > len(s) {
			return nil, bad
		}
		out = append(out, s[:l:l])
		s = s[l:]
	}
	if len(s) != 0 {
		return nil, bad
	}
	return out, nil
}

// EncodeByteaArray encodes elems (ciphertexts; nil is NULL) as a
// one-dimensional bytea[] value in format, for the parameter that replaces
// an array of PHI values.
func EncodeByteaArray(elems [][]byte, format int16) []byte {
	if format == BinaryFormat {
		hasNull := uint32(0)
		size := 20
		for _, e := range elems {
			if e == nil {
				hasNull = 1
			}
			size += 4 + len(e)
		}
		out := make([]byte, 0, size)
		if len(elems) == 0 {
			out = binary.BigEndian.AppendUint32(out, 0)
			out = binary.BigEndian.AppendUint32(out, 0)
			return binary.BigEndian.AppendUint32(out, pgtype.ByteaOID)
		}
		out = binary.BigEndian.AppendUint32(out, 1)
		out = binary.BigEndian.AppendUint32(out, hasNull)
		out = binary.BigEndian.AppendUint32(out, pgtype.ByteaOID)
		out = binary.BigEndian.AppendUint32(out, uint32(len(elems)))
		out = binary.BigEndian.AppendUint32(out, 1)
		for _, e := range elems {
			if e == nil {
				out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
				continue
			}
			out = binary.BigEndian.AppendUint32(out, uint32(len(e)))
			out = append(out, e...)
		}
		return out
	}
	out := []byte{'{'}
	for i, e := range elems {
		if i > 0 {
			out = append(out, ',')
		}
		if e == nil {
			out = append(out, "NULL"...)
			continue
		}
		// "\\x…": the backslash is escaped inside a quoted element.
		out = append(out, '"', '\\', '\\', 'x')
		out = hex.AppendEncode(out, e)
		out = append(out, '"')
	}
	return append(out, '}')
}

// splitTextArray splits array_in's text form into elements (nil for NULL),
// flattening dimensions; sub-arrays must be rectangular.
func splitTextArray(src []byte) ([][]byte, bool) {
	s := trimSpace(src)
	if len(s) > 0 && s[0] == '[' { // dimension decoration [lb:ub]...=
		i := bytes.IndexByte(s, '=')
		if i < 0 {
			return nil, false
		}
		s = trimSpace(s[i+1:])
	}
	var out [][]byte
	var counts []int // elements or sub-arrays seen at each open level
	var dims []int   // established size per level, -1 unknown
	depth := 0
	expectItem := true
	for len(s) > 0 {
		c := s[0]
		switch {
		case isSpace(c):
			s = s[1:]
		case c == '{':
			if !expectItem {
				return nil, false
			}
			if depth > 0 {
				counts[depth-1]++
			}
			depth++
			if depth > 6 {
				return nil, false
			}
			if len(counts) < depth {
				counts = append(counts, 0)
				dims = append(dims, -1)
			}
			counts[depth-1] = 0
			s = s[1:]
		case c == '}':
			if depth == 0 || (expectItem && counts[depth-1] > 0) || (depth > 1 && counts[depth-1] == 0) {
				return nil, false
			}
			if dims[depth-1] == -1 {
				dims[depth-1] = counts[depth-1]
			} else if dims[depth-1] != counts[depth-1] {
				return nil, false
			}
			depth--
			expectItem = false
			s = s[1:]
			if depth == 0 {
				return out, len(trimSpace(s)) == 0
			}
		case c == ',':
			if expectItem || depth == 0 {
				return nil, false
			}
			expectItem = true
			s = s[1:]
		default:
			if !expectItem || depth == 0 || depth < len(dims) && dims[depth] != -1 {
				return nil, false
			}
			var elem []byte
			quoted := false
			lastSig := 0 // length of elem up to its last escaped or non-space byte
			for len(s) > 0 {
				c := s[0]
				if c == '\\' {
					if len(s) < 2 {
						return nil, false
					}
					elem = append(elem, s[1])
					lastSig = len(elem)
					s = s[2:]
					continue
				}
				if c == '"' {
					if len(elem) != 0 || quoted {
						return nil, false
					}
					s = s[1:]
					for {
						if len(s) == 0 {
							return nil, false
						}
						if s[0] == '\\' && len(s) > 1 {
							elem = append(elem, s[1])
							s = s[2:]
							continue
						}
						if s[0] == '"' {
							s = s[1:]
							break
						}
						elem = append(elem, s[0])
						s = s[1:]
					}
					quoted = true
					lastSig = len(elem)
					continue
				}
				if c == ',' || c == '}' || c == '{' {
					break
				}
				if quoted && !isSpace(c) {
					return nil, false
				}
				elem = append(elem, c)
				if !isSpace(c) {
					lastSig = len(elem)
				}
				s = s[1:]
			}
			elem = elem[:lastSig]
			if !quoted && len(elem) == 0 {
				return nil, false
			}
			if !quoted && equalFold(elem, "null") {
				elem = nil
			} else if elem == nil {
				elem = []byte{}
			}
			out = append(out, elem)
			counts[depth-1]++
			expectItem = false
		}
	}
	return nil, false
}

package codec

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
)

// Wire formats, as in the protocol's format codes.
const (
	TextFormat   int16 = 0
	BinaryFormat int16 = 1
)

// typeInfo describes one logical type.
type typeInfo struct {
	name     string
	oid      uint32
	arrayOID uint32
	// text parses PostgreSQL text input and appends the canonical form.
	text func(c Codec, dst, src []byte) ([]byte, error)
	// binary parses the binary wire format and appends the canonical form.
	binary func(dst, src []byte) ([]byte, error)
	// toBinary appends the binary form of a canonical value.
	toBinary func(dst, canon []byte) ([]byte, error)
}

var types = [...]typeInfo{
	{"text", pgtype.TextOID, pgtype.TextArrayOID, textIn, textRecv, textSend},
	{"varchar", pgtype.VarcharOID, pgtype.VarcharArrayOID, textIn, textRecv, textSend},
	{"bpchar", pgtype.BPCharOID, pgtype.BPCharArrayOID, textIn, textRecv, textSend},
	{"int4", pgtype.Int4OID, pgtype.Int4ArrayOID, int4In, int4Recv, int4Send},
	{"int8", pgtype.Int8OID, pgtype.Int8ArrayOID, int8In, int8Recv, int8Send},
	{"bool", pgtype.BoolOID, pgtype.BoolArrayOID, boolIn, boolRecv, boolSend},
	{"uuid", pgtype.UUIDOID, pgtype.UUIDArrayOID, uuidIn, uuidRecv, uuidSend},
	{"numeric", pgtype.NumericOID, pgtype.NumericArrayOID, numericIn, numericRecv, numericSend},
	{"date", pgtype.DateOID, pgtype.DateArrayOID, dateIn, dateRecv, dateSend},
	{"timestamp", pgtype.TimestampOID, pgtype.TimestampArrayOID, timestampIn, timestampRecv, timestampSend},
	{"timestamptz", pgtype.TimestamptzOID, pgtype.TimestamptzArrayOID, timestamptzIn, timestamptzRecv, timestampSend},
	{"jsonb", pgtype.JSONBOID, pgtype.JSONBArrayOID, jsonbIn, jsonbRecv, jsonbSend},
}

// lookup finds a logical type by name; a modifier ("varchar(3)") is
// ignored: see spec.
func lookup(name string) (*typeInfo, error) {
	name = config.BaseType(name)
	for i := range types {
		if types[i].name == name {
			return &types[i], nil
		}
	}
	return nil, pgerr.Newf(pgerr.Internal, "codec: unknown logical type %q", name)
}

// Types returns the logical type names the codec supports, in the spelling
// of config.CanonicalType.
func Types() []string {
	out := make([]string, len(types))
	for i, t := range types {
		out[i] = t.name
	}
	return out
}

// OID returns the PostgreSQL type OID of a logical type, for
// RowDescription and ParameterDescription; 0 if the type is unknown.
func OID(logicalType string) uint32 {
	t, err := lookup(logicalType)
	if err != nil {
		return 0
	}
	return t.oid
}

// ArrayOID returns the OID of the array type of a logical type; 0 if
// unknown.
func ArrayOID(logicalType string) uint32 {
	t, err := lookup(logicalType)
	if err != nil {
		return 0
	}
	return t.arrayOID
}

// Codec converts values for one session. The zero value is a session with
// TimeZone UTC. It is immutable and safe for concurrent use.
type Codec struct {
	// TimeZone is the session's TimeZone setting: text timestamptz values
	// are output in it, and timestamptz input without an offset is read in
	// it. nil means UTC. The canonical form is always UTC.
	TimeZone *time.Location
}

func (c Codec) loc() *time.Location {
	if c.TimeZone == nil {
		return time.UTC
	}
	return c.TimeZone
}

// Canonical decodes src, a client value of logicalType in format (0 text,
// 1 binary), and returns its canonical text form. src must not be NULL.
func (c Codec) Canonical(logicalType string, format int16, src []byte) ([]byte, error) {
	return c.AppendCanonical(nil, logicalType, format, src)
}

// AppendCanonical is Canonical appending to dst. The value is taken as
// written into a column of logicalType: a modifier of the type is applied
// as PostgreSQL's assignment applies it (see AppendBound).
func (c Codec) AppendCanonical(dst []byte, logicalType string, format int16, src []byte) ([]byte, error) {
	if strings.IndexByte(logicalType, '(') >= 0 {
		return c.AppendBound(dst, logicalType, Coercion{Assign: true}, 0, format, src)
	}
	t, err := lookup(logicalType)
	if err != nil {
		return nil, err
	}
	switch format {
	case TextFormat:
		return t.text(c, dst, src)
	case BinaryFormat:
		return t.binary(dst, src)
	}
	return nil, pgerr.Newf(pgerr.ProtocolViolation, "unsupported format code: %d", format)
}

// Encode turns a canonical value of logicalType into the client's format:
// text as is (timestamptz converted to the session's TimeZone), or the
// type's binary wire format. A canonical value that does not parse means
// corrupted or foreign plaintext and yields XX001.
func (c Codec) Encode(logicalType string, format int16, canonical []byte) ([]byte, error) {
	return c.AppendEncode(nil, logicalType, format, canonical)
}

// AppendEncode is Encode appending to dst.
func (c Codec) AppendEncode(dst []byte, logicalType string, format int16, canonical []byte) ([]byte, error) {
	t, err := lookup(logicalType)
	if err != nil {
		return nil, err
	}
	var out []byte
	switch format {
	case TextFormat:
		if t.name == "timestamptz" && c.loc() != time.UTC {
			out, err = timestamptzOut(dst, canonical, c.loc())
		} else {
			return append(dst, canonical...), nil
		}
	case BinaryFormat:
		out, err = t.toBinary(dst, canonical)
	default:
		return nil, pgerr.Newf(pgerr.ProtocolViolation, "unsupported format code: %d", format)
	}
	if err != nil {
		return nil, pgerr.Newf(pgerr.DataCorrupted, "decrypted value is not a canonical %s", t.name).WithCause(err)
	}
	return out, nil
}

// Canonical is Codec{}.Canonical: a session in TimeZone UTC.
func Canonical(logicalType string, format int16, src []byte) ([]byte, error) {
	return Codec{}.Canonical(logicalType, format, src)
}

// Encode is Codec{}.Encode: a session in TimeZone UTC.
func Encode(logicalType string, format int16, canonical []byte) ([]byte, error) {
	return Codec{}.Encode(logicalType, format, canonical)
}

// WithColumn returns err with the PHI column's identity added to its
// message, for the caller that knows which column a value was bound for.
// Errors that are not *pgerr.Error are returned unchanged.
func WithColumn(err error, column string) error {
	var pe *pgerr.Error
	if !errors.As(err, &pe) {
		return err
	}
	c := *pe
	c.Message = pe.Message + " (PHI column " + column + ")"
	return &c
}

// Errors. Messages follow PostgreSQL's but never quote the input.

func syntaxErr(typ string) error {
	return pgerr.Newf(pgerr.InvalidTextRepresentation, "invalid input syntax for type %s", typ)
}

func datetimeSyntaxErr(typ string) error {
	return pgerr.Newf(pgerr.InvalidDatetimeFormat, "invalid input syntax for type %s", typ).
		WithHint("phiproxy accepts ISO 8601 values for PHI columns, such as 1980-01-02 or 1980-01-02 13:45:00+01.")
}

func fieldRangeErr(typ string) error {
	return pgerr.Newf(pgerr.DatetimeFieldOverflow, "date/time field value out of range for type %s", typ)
}

func outOfRangeErr(typ string) error {
	return pgerr.Newf(pgerr.DatetimeFieldOverflow, "%s out of range", typ)
}

func numRangeErr(typ string) error {
	return pgerr.Newf(pgerr.NumericValueOutOfRange, "value is out of range for type %s", typ)
}

func binaryErr(typ string) error {
	return pgerr.Newf(pgerr.InvalidBinaryRepresentation, "incorrect binary data format for type %s", typ)
}

// isSpace is C's isspace in the C locale, which PostgreSQL's input
// functions use to trim.
func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f'
}

// skipSpace returns s without its leading white space.
func skipSpace(s []byte) []byte {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	return s
}

// cutSign returns s without one leading sign, and whether it was '-'.
func cutSign(s []byte) ([]byte, bool) {
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		return s[1:], s[0] == '-'
	}
	return s, false
}

func trimSpace(s []byte) []byte {
	s = skipSpace(s)
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

func lower(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

// equalFold reports whether s equals the lower-case ASCII word w, ignoring
// ASCII case.
func equalFold(s []byte, w string) bool {
	if len(s) != len(w) {
		return false
	}
	for i := range s {
		if lower(s[i]) != w[i] {
			return false
		}
	}
	return true
}

// AppendCanonicalFrom is AppendCanonical for a parameter the client declared
// with its own type (Parse's parameter OIDs) rather than the column's
// logical type: psycopg sends a small Python int as binary int2, pgjdbc a
// String as varchar. PostgreSQL would coerce such a value to the column's
// type; here a binary value of the declared type is first turned into its
// text form and then read as the logical type, which is the same
// assignment coercion for the types a client sends. A text value, an
// unspecified (0) or identical declared type takes the plain path.
func (c Codec) AppendCanonicalFrom(dst []byte, logicalType string, declared uint32, format int16, src []byte) ([]byte, error) {
	if format != BinaryFormat || declared == 0 || declared == OID(logicalType) {
		return c.AppendCanonical(dst, logicalType, format, src)
	}
	var text []byte
	switch declared {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.UnknownOID, pgtype.JSONOID:
		text = src // their binary form is the text itself
	case pgtype.Int2OID:
		if len(src) != 2 {
			return nil, binaryErr("smallint")
		}
		text = strconv.AppendInt(nil, int64(int16(binary.BigEndian.Uint16(src))), 10)
	case pgtype.Float4OID, pgtype.Float8OID:
		// Floats are not coerced: their text form is not what the
		// client meant for an exact type.
		return nil, pgerr.New(pgerr.DatatypeMismatch, "a binary float parameter cannot be stored in an encrypted "+logicalType+" column").
			WithHint("send the value as text or as " + logicalType)
	default:
		name := ""
		for _, t := range types {
			if t.oid == declared {
				name = t.name
			}
		}
		if name == "" {
			return nil, pgerr.Newf(pgerr.DatatypeMismatch, "a binary parameter of type OID %d cannot be stored in an encrypted %s column", declared, logicalType).
				WithHint("send the value as text or as " + logicalType)
		}
		var err error
		if text, err = c.AppendCanonical(nil, name, BinaryFormat, src); err != nil {
			return nil, err
		}
	}
	out, err := c.AppendCanonical(dst, logicalType, TextFormat, text)
	if len(text) > 0 && (len(src) == 0 || &text[0] != &src[0]) {
		clear(text) // a plaintext copy made here
	}
	return out, err
}

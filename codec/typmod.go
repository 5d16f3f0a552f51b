package codec

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
)

// Type modifiers. A PHI column's logical type may carry one
// (config.LogicalType: varchar(n), bpchar(n), numeric(p,s), timestamp(p),
// timestamptz(p)), and so may an explicit cast written around a value bound
// for a PHI column. PostgreSQL applies a modifier in three ways, and so
// does the codec, on the canonical text of the base type:
//
//	explicit cast  varchar(n) and char(n) truncate to n characters (char
//	               pads); numeric(p,s) rounds to s digits and fails with
//	               22003 when the integer part needs more than p-s digits;
//	               timestamp(p) rounds the fractional seconds to p digits
//	assignment     (a value written into the column) the same, except that
//	               a varchar(n) or char(n) value longer than n characters
//	               fails with 22001 unless the excess is spaces
//	comparison     (a value compared with the column) keeps its value; only
//	               its canonical form follows the column's: char(n) ignores
//	               trailing spaces and pads, numeric(p,s) shows s digits
//	               when the value has no more
//
// The canonical forms of a column with a modifier are those PostgreSQL
// stores: char(n) padded to n, numeric(p,s) with exactly s fraction digits.
// A compared value that no stored value can equal (a varchar(3) column
// compared with 'abcd', a numeric(5,2) one with 1.234) keeps a form that
// matches nothing, as in PostgreSQL.

// how is the way a modifier is applied.
type how uint8

const (
	explicitCast how = iota
	assignment
	comparison
)

// Coercion says what PostgreSQL does with a value bound for a PHI column
// before it is stored or compared (rewrite.Slot's Cast and Assign).
type Coercion struct {
	// Cast is an explicit cast with a modifier around the value, in
	// config's canonical spelling ("varchar(3)"), applied first; "" for
	// none.
	Cast string
	// Assign is set for a value written into the column; otherwise it is
	// compared with the column.
	Assign bool
}

// Typmod returns PostgreSQL's atttypmod of a logical type, as
// RowDescription reports it: -1 when it has no modifier.
func Typmod(logicalType string) int32 {
	t, err := config.ParseLogicalType(logicalType)
	if err != nil {
		return -1
	}
	return t.Typmod()
}

// spec parses a logical type with its modifier.
func spec(logicalType string) (*typeInfo, config.LogicalType, error) {
	lt, err := config.ParseLogicalType(logicalType)
	if err != nil {
		return nil, lt, pgerr.Newf(pgerr.InvalidParameterValue, "codec: %v", err)
	}
	t, err := lookup(lt.Name)
	return t, lt, err
}

// AppendBound is the canonical form of a value bound for a PHI column of
// logicalType: the client's value (format, and the type the client
// declared for a parameter, 0 if none: see AppendCanonicalFrom) decoded,
// co.Cast applied as an explicit cast, then the column's modifier applied
// as an assignment or a comparison.
func (c Codec) AppendBound(dst []byte, logicalType string, co Coercion, declared uint32, format int16, src []byte) ([]byte, error) {
	t, lt, err := spec(logicalType)
	if err != nil {
		return nil, err
	}
	h := comparison
	if co.Assign {
		h = assignment
	}
	if co.Cast == "" && !lt.HasMod {
		return c.AppendCanonicalFrom(dst, t.name, declared, format, src)
	}
	canon, err := c.AppendCanonicalFrom(nil, t.name, declared, format, src)
	if err != nil {
		return nil, err
	}
	// canon, and what the modifiers make of it, are plaintext copies of
	// the caller's value: wiped once appended to dst.
	defer clear(canon)
	if co.Cast != "" {
		ct, clt, err := spec(co.Cast)
		if err != nil {
			return nil, err
		}
		if ct.name != t.name && !(textual(ct.name) && textual(t.name)) {
			return nil, pgerr.Newf(pgerr.DatatypeMismatch, "a cast to %s cannot be applied to a value for a %s column", ct.name, t.name)
		}
		cast, err := applyMod(canon, clt, explicitCast)
		if err != nil {
			return nil, err
		}
		defer clear(cast)
		canon = cast
	}
	out, err := applyMod(canon, lt, h)
	if err != nil {
		return nil, err
	}
	dst = append(dst, out...)
	clear(out)
	return dst, nil
}

func textual(name string) bool { return name == "text" || name == "varchar" || name == "bpchar" }

// applyMod applies lt's modifier to canon, the canonical text of lt's
// base type.
func applyMod(canon []byte, lt config.LogicalType, h how) ([]byte, error) {
	if !lt.HasMod {
		return canon, nil
	}
	switch lt.Name {
	case "varchar", "bpchar":
		return charMod(canon, lt, h)
	case "numeric":
		return numericMod(canon, lt, h)
	case "timestamp", "timestamptz":
		if h == comparison {
			return canon, nil
		}
		return timestampMod(canon, lt)
	}
	return canon, nil
}

func charMod(s []byte, lt config.LogicalType, h how) ([]byte, error) {
	n := lt.Len
	pad := lt.Name == "bpchar"
	if h == comparison {
		if !pad {
			return s, nil
		}
		// bpchar comparison ignores trailing spaces.
		trimmed := strings.TrimRight(string(s), " ")
		if utf8.RuneCountInString(trimmed) > n {
			return []byte(trimmed), nil
		}
		return padTo([]byte(trimmed), n), nil
	}
	if utf8.RuneCount(s) > n {
		cut := runePrefix(s, n)
		if h == assignment && strings.TrimRight(string(s[cut:]), " ") != "" {
			typ := "character varying"
			if pad {
				typ = "character"
			}
			return nil, pgerr.Newf(pgerr.StringDataRightTruncation, "value too long for type %s(%d)", typ, n)
		}
		s = s[:cut]
	}
	if pad {
		return padTo(s, n), nil
	}
	return s, nil
}

// runePrefix is the byte length of the first n characters of s.
func runePrefix(s []byte, n int) int {
	i := 0
	for k := 0; k < n && i < len(s); k++ {
		_, size := utf8.DecodeRune(s[i:])
		i += size
	}
	return i
}

func padTo(s []byte, n int) []byte {
	if k := n - utf8.RuneCount(s); k > 0 {
		s = append(s, strings.Repeat(" ", k)...)
	}
	return s
}

func numericMod(canon []byte, lt config.LogicalType, h how) ([]byte, error) {
	d, err := parseNumeric(canon)
	if err != nil {
		return nil, err
	}
	d = d.normalized()
	p, s := lt.Precision, lt.Scale
	if h == comparison {
		if d.special == 0 && len(d.frac) <= s {
			d.frac += strings.Repeat("0", s-len(d.frac))
		}
		return d.appendText(nil), nil
	}
	switch d.special {
	case numericNaN:
		return d.appendText(nil), nil
	case numericPInf, numericNInf:
		return nil, pgerr.New(pgerr.NumericValueOutOfRange, "numeric field overflow").
			WithDetail(fmt.Sprintf("A field with precision %d, scale %d cannot hold an infinite value.", p, s))
	}
	d = d.round(s)
	if len(d.int) > p-s {
		return nil, pgerr.New(pgerr.NumericValueOutOfRange, "numeric field overflow").
			WithDetail(fmt.Sprintf("A field with precision %d, scale %d must round to an absolute value less than %s.", p, s, powerOf10(p-s)))
	}
	return d.appendText(nil), nil
}

func powerOf10(k int) string {
	if k == 0 {
		return "1"
	}
	return "10^" + strconv.Itoa(k)
}

// round rounds d to s fraction digits, half away from zero, as numeric's
// round does, and pads the fraction to s digits.
func (d decimal) round(s int) decimal {
	if len(d.frac) <= s {
		d.frac += strings.Repeat("0", s-len(d.frac))
		return d
	}
	up := d.frac[s] >= '5'
	digits := []byte(d.int + d.frac[:s])
	if up {
		i := len(digits) - 1
		for ; i >= 0; i-- {
			if digits[i] == '9' {
				digits[i] = '0'
				continue
			}
			digits[i]++
			break
		}
		if i < 0 {
			digits = append([]byte{'1'}, digits...)
		}
	}
	d.int = strings.TrimLeft(string(digits[:len(digits)-s]), "0")
	d.frac = string(digits[len(digits)-s:])
	return d
}

func timestampMod(canon []byte, lt config.LogicalType) ([]byte, error) {
	tz := lt.Name == "timestamptz"
	u, err := usecOf(Codec{}, canon, tz)
	if err != nil {
		return nil, err
	}
	if u == tsPosInf || u == tsNegInf || lt.Precision >= 6 {
		return canon, nil
	}
	// AdjustTimestampForTypmod: half away from 2000-01-01.
	scale := int64(1)
	for range 6 - lt.Precision {
		scale *= 10
	}
	off := scale / 2
	if u >= 0 {
		u = (u + off) / scale * scale
	} else {
		u = -((-u + off) / scale * scale)
	}
	if u < timestampMin || u >= timestampEnd {
		typ := "timestamp"
		if tz {
			typ = "timestamp with time zone"
		}
		return nil, outOfRangeErr(typ)
	}
	return appendTimestampValue(nil, u, tz), nil
}

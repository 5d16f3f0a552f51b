package policy

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaskApplies says the mask a can be applied to a column of the logical
// type typ (its canonical name, with a modifier: varchar(11)). Plaintext
// and deny apply to every type.
func MaskApplies(a Access, typ string) error {
	base, _, _ := strings.Cut(typ, "(")
	switch a {
	case MaskLast4, MaskRedact:
		if base == "text" || base == "varchar" || base == "bpchar" {
			return nil
		}
	case MaskYear:
		if base == "date" || base == "timestamp" || base == "timestamptz" {
			return nil
		}
	default:
		return nil
	}
	return fmt.Errorf("%s does not apply to a %s column (mask:last4 and mask:redact: text, varchar; mask:year: date, timestamp, timestamptz)", a, typ)
}

// AppendMask appends the mask a of the canonical plaintext pt (codec's
// canonical text form of type typ) to dst, in the same canonical form:
// a valid value of the type that the codec encodes like any other.
//
//	mask:last4   every letter and digit but the last four becomes '*',
//	             the rest kept: 123-45-6789 → ***-**-6789
//	mask:redact  **** (cut to varchar(n)'s length)
//	mask:year    the 1st of January of the value's year, at midnight:
//	             1980-06-15 → 1980-01-01; infinities as they are
func AppendMask(dst []byte, a Access, typ string, pt []byte) []byte {
	switch a {
	case MaskLast4:
		keep := 0
		for i := len(pt); i > 0 && keep < 4; {
			r, n := utf8.DecodeLastRune(pt[:i])
			i -= n
			if unicode.IsLetter(r) || unicode.IsDigit(r) {
				keep++
				if keep == 4 {
					return appendStars(dst, pt[:i], pt[i:])
				}
			}
		}
		return append(dst, pt...) // four or fewer: nothing to hide beyond them
	case MaskRedact:
		n := 4
		if _, mod, ok := strings.Cut(typ, "("); ok {
			if l, err := strconv.Atoi(strings.TrimSuffix(mod, ")")); err == nil && l < n {
				n = l
			}
		}
		return append(dst, "****"[:n]...)
	case MaskYear:
		s := string(pt)
		if s == "infinity" || s == "-infinity" || len(s) < 4 {
			return append(dst, pt...)
		}
		year, rest, _ := strings.Cut(s, "-")
		bc := strings.HasSuffix(rest, " BC")
		base, _, _ := strings.Cut(typ, "(")
		dst = append(dst, year...)
		dst = append(dst, "-01-01"...)
		switch base {
		case "timestamp":
			dst = append(dst, " 00:00:00"...)
		case "timestamptz":
			dst = append(dst, " 00:00:00+00"...)
		}
		if bc {
			dst = append(dst, " BC"...)
		}
		return dst
	}
	return append(dst, pt...)
}

// appendStars appends head with every letter and digit replaced by '*',
// then tail.
func appendStars(dst, head, tail []byte) []byte {
	for _, r := range string(head) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			dst = append(dst, '*')
		} else {
			dst = utf8.AppendRune(dst, r)
		}
	}
	return append(dst, tail...)
}

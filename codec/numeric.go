package codec

import (
	"encoding/binary"
	"strings"
)

// numeric follows PostgreSQL 15's numeric_in, numeric_out, numeric_recv
// and numeric_send. The canonical form is numeric_out's without trailing
// fraction zeros (trim_scale): equal values have one form.

const (
	numericMaxIntDigits = 4 * 32768 // weight is an int16 of base-10000 digits
	numericMaxDscale    = 0x3FFF
	numericMaxExponent  = (1<<31 - 1) / 2

	numericPos  = 0x0000
	numericNeg  = 0x4000
	numericNaN  = 0xC000
	numericPInf = 0xD000
	numericNInf = 0xF000
)

// decimal is a parsed numeric: a special value, or sign, integer digits
// without leading zeros and exactly dscale fraction digits.
type decimal struct {
	special uint16 // 0, numericNaN, numericPInf or numericNInf
	neg     bool
	int     string
	frac    string
}

func (d decimal) isZero() bool {
	return strings.Trim(d.int, "0") == "" && strings.Trim(d.frac, "0") == ""
}

func (d decimal) appendText(dst []byte) []byte {
	switch d.special {
	case numericNaN:
		return append(dst, "NaN"...)
	case numericPInf:
		return append(dst, "Infinity"...)
	case numericNInf:
		return append(dst, "-Infinity"...)
	}
	if d.neg && !d.isZero() {
		dst = append(dst, '-')
	}
	if d.int == "" {
		dst = append(dst, '0')
	} else {
		dst = append(dst, d.int...)
	}
	if d.frac != "" {
		dst = append(dst, '.')
		dst = append(dst, d.frac...)
	}
	return dst
}

// normalized drops trailing fraction zeros: numeric equality ignores the
// display scale (1.0 = 1 = 1.00), so the canonical form, which
// deterministic encryption compares, must too. A client reads back 1.0
// stored through phiproxy as 1; a numeric(p,s) column keeps s digits.
func (d decimal) normalized() decimal {
	d.frac = strings.TrimRight(d.frac, "0")
	return d
}

func numericIn(_ Codec, dst, src []byte) ([]byte, error) {
	if err := checkText(src); err != nil {
		return nil, err
	}
	d, err := parseNumeric(src)
	if err != nil {
		return nil, err
	}
	return d.normalized().appendText(dst), nil
}

func hasPrefixFold(s []byte, w string) bool {
	return len(s) >= len(w) && equalFold(s[:len(w)], w)
}

func parseNumeric(src []byte) (decimal, error) {
	s := skipSpace(src)
	var d decimal
	specials := []struct {
		word string
		kind uint16
	}{{"nan", numericNaN}, {"infinity", numericPInf}, {"+infinity", numericPInf}, {"-infinity", numericNInf},
		{"inf", numericPInf}, {"+inf", numericPInf}, {"-inf", numericNInf}}
	for _, sp := range specials {
		if hasPrefixFold(s, sp.word) {
			if len(trimSpace(s[len(sp.word):])) != 0 {
				return d, syntaxErr("numeric")
			}
			d.special = sp.kind
			return d, nil
		}
	}
	s, d.neg = cutSign(s)
	haveDP := false
	if len(s) > 0 && s[0] == '.' {
		haveDP = true
		s = s[1:]
	}
	if len(s) == 0 || !isDigit(s[0]) {
		return d, syntaxErr("numeric")
	}
	var digits []byte
	scale := 0
	for len(s) > 0 {
		if isDigit(s[0]) {
			digits = append(digits, s[0])
			if haveDP {
				scale++
			}
		} else if s[0] == '.' {
			if haveDP {
				return d, syntaxErr("numeric")
			}
			haveDP = true
		} else {
			break
		}
		s = s[1:]
	}
	exp := 0
	if len(s) > 0 && (s[0] == 'e' || s[0] == 'E') {
		s = s[1:]
		// strtol: optional whitespace and sign, then at least one digit.
		t, eneg := cutSign(skipSpace(s))
		if len(t) == 0 || !isDigit(t[0]) {
			return d, syntaxErr("numeric")
		}
		for len(t) > 0 && isDigit(t[0]) {
			if exp < numericMaxExponent {
				exp = exp*10 + int(t[0]-'0')
			}
			t = t[1:]
		}
		if exp >= numericMaxExponent {
			return d, numRangeErr("numeric")
		}
		if eneg {
			exp = -exp
		}
		s = t
	}
	if len(trimSpace(s)) != 0 {
		return d, syntaxErr("numeric")
	}
	dscale := max(0, scale-exp)
	if dscale > numericMaxDscale {
		return d, numRangeErr("numeric")
	}
	sig := strings.TrimLeft(string(digits), "0")
	k := exp - scale // value = sig × 10^k
	if sig == "" {
		d.frac = strings.Repeat("0", dscale)
		return d, nil
	}
	intLen := len(sig) + k
	if intLen > numericMaxIntDigits {
		return d, numRangeErr("numeric")
	}
	switch {
	case k >= 0:
		d.int = sig + strings.Repeat("0", k)
	case intLen > 0:
		d.int, d.frac = sig[:intLen], sig[intLen:]
	default:
		d.frac = strings.Repeat("0", -intLen) + sig
	}
	return d, nil
}

func numericRecv(dst, src []byte) ([]byte, error) {
	if len(src) < 8 {
		return nil, binaryErr("numeric")
	}
	n := int(binary.BigEndian.Uint16(src[0:]))
	weight := int(int16(binary.BigEndian.Uint16(src[2:])))
	sign := binary.BigEndian.Uint16(src[4:])
	dscale := int(binary.BigEndian.Uint16(src[6:]))
	if len(src) != 8+2*n || dscale > numericMaxDscale {
		return nil, binaryErr("numeric")
	}
	var d decimal
	switch sign {
	case numericPos, numericNeg:
		d.neg = sign == numericNeg
	case numericNaN, numericPInf, numericNInf:
		d.special = sign
		return d.appendText(dst), nil
	default:
		return nil, binaryErr("numeric")
	}
	groups := make([]int, n)
	for i := range groups {
		g := int(int16(binary.BigEndian.Uint16(src[8+2*i:])))
		if g < 0 || g >= 10000 {
			return nil, binaryErr("numeric")
		}
		groups[i] = g
	}
	var ib, fb []byte
	for i := 0; i <= weight; i++ {
		g := 0
		if i < n {
			g = groups[i]
		}
		ib = append4(ib, g)
	}
	for range max(0, -weight-1) {
		if len(fb) >= dscale {
			break
		}
		fb = append(fb, "0000"...)
	}
	for i := max(0, weight+1); i < n && len(fb) < dscale; i++ {
		fb = append4(fb, groups[i])
	}
	if len(fb) > dscale {
		fb = fb[:dscale] // numeric_recv truncates digits hidden by dscale
	}
	for len(fb) < dscale {
		fb = append(fb, '0')
	}
	d.int = strings.TrimLeft(string(ib), "0")
	d.frac = string(fb)
	return d.normalized().appendText(dst), nil
}

func append4(b []byte, g int) []byte {
	return append(b, byte('0'+g/1000), byte('0'+g/100%10), byte('0'+g/10%10), byte('0'+g%10))
}

func numericSend(dst, canon []byte) ([]byte, error) {
	d, err := parseNumeric(canon)
	if err != nil {
		return nil, err
	}
	switch d.special {
	case numericNaN:
		return append(dst, 0, 0, 0, 0, 0xC0, 0, 0, 0), nil
	case numericPInf, numericNInf:
		// numeric_send reports the header's low bits as dscale for the
		// infinities: 0x20, not 0. Match it byte for byte.
		return append(dst, 0, 0, 0, 0, byte(d.special>>8), 0, 0, 0x20), nil
	}
	ip := d.int
	if r := len(ip) % 4; r != 0 {
		ip = strings.Repeat("0", 4-r) + ip
	}
	fp := d.frac
	if r := len(fp) % 4; r != 0 {
		fp += strings.Repeat("0", 4-r)
	}
	all := ip + fp
	weight := len(ip)/4 - 1
	groups := make([]uint16, 0, len(all)/4)
	for i := 0; i < len(all); i += 4 {
		g := uint16(all[i]-'0')*1000 + uint16(all[i+1]-'0')*100 + uint16(all[i+2]-'0')*10 + uint16(all[i+3]-'0')
		groups = append(groups, g)
	}
	for len(groups) > 0 && groups[0] == 0 {
		groups = groups[1:]
		weight--
	}
	for len(groups) > 0 && groups[len(groups)-1] == 0 {
		groups = groups[:len(groups)-1]
	}
	sign := uint16(numericPos)
	if len(groups) == 0 {
		weight = 0
	} else if d.neg {
		sign = numericNeg
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(groups)))
	dst = binary.BigEndian.AppendUint16(dst, uint16(int16(weight)))
	dst = binary.BigEndian.AppendUint16(dst, sign)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(d.frac)))
	for _, g := range groups {
		dst = binary.BigEndian.AppendUint16(dst, g)
	}
	return dst, nil
}

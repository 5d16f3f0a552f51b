package codec

import (
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/phiproxy/phiproxy/pgerr"
)

// jsonb follows PostgreSQL 15's JSON lexer and jsonb output: keys sorted by
// length then bytes, the last of duplicate keys wins, numbers through
// numeric, strings re-escaped as escape_json does.

// jsonMaxDepth bounds nesting. PostgreSQL's bound is its stack depth
// (thousands of levels); deeper documents are refused here with 54001.
const jsonMaxDepth = 1000

type jnode struct {
	kind byte // '{', '[', '"', '0' (number), 't', 'f', 'n'
	str  string
	keys []string
	vals []*jnode
}

type jparser struct {
	s     []byte
	depth int
}

var errJSONDepth = pgerr.New(pgerr.StatementTooComplex, "stack depth limit exceeded while parsing jsonb")

func jsonErr() error { return syntaxErr("json") }

func (p *jparser) ws() {
	for len(p.s) > 0 && (p.s[0] == ' ' || p.s[0] == '\t' || p.s[0] == '\n' || p.s[0] == '\r') {
		p.s = p.s[1:]
	}
}

func (p *jparser) value() (*jnode, error) {
	p.ws()
	if len(p.s) == 0 {
		return nil, jsonErr()
	}
	switch c := p.s[0]; {
	case c == '{' || c == '[':
		p.depth++
		if p.depth > jsonMaxDepth {
			return nil, errJSONDepth
		}
		defer func() { p.depth-- }()
		p.s = p.s[1:]
		n := &jnode{kind: c}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		p.ws()
		if len(p.s) > 0 && p.s[0] == end {
			p.s = p.s[1:]
			return n, nil
		}
		for {
			if c == '{' {
				p.ws()
				if len(p.s) == 0 || p.s[0] != '"' {
					return nil, jsonErr()
				}
				k, err := p.string()
				if err != nil {
					return nil, err
				}
				p.ws()
				if len(p.s) == 0 || p.s[0] != ':' {
					return nil, jsonErr()
				}
				p.s = p.s[1:]
				n.keys = append(n.keys, k)
			}
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			n.vals = append(n.vals, v)
			p.ws()
			if len(p.s) == 0 {
				return nil, jsonErr()
			}
			if p.s[0] == ',' {
				p.s = p.s[1:]
				continue
			}
			if p.s[0] == end {
				p.s = p.s[1:]
				break
			}
			return nil, jsonErr()
		}
		if c == '{' {
			n.sortKeys()
		}
		return n, nil
	case c == '"':
		s, err := p.string()
		if err != nil {
			return nil, err
		}
		return &jnode{kind: '"', str: s}, nil
	case c == '-' || isDigit(c):
		return p.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if len(p.s) >= len(lit) && string(p.s[:len(lit)]) == lit && (len(p.s) == len(lit) || !isJSONIdent(p.s[len(lit)])) {
				p.s = p.s[len(lit):]
				return &jnode{kind: lit[0]}, nil
			}
		}
	}
	return nil, jsonErr()
}

func isJSONIdent(b byte) bool {
	return b == '_' || b >= 0x80 || isDigit(b) || ('a' <= b && b <= 'z') || ('A' <= b && b <= 'Z')
}

func (p *jparser) number() (*jnode, error) {
	s := p.s
	i := 0
	if s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && isDigit(s[i]):
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	default:
		return nil, jsonErr()
	}
	if i < len(s) && s[i] == '.' {
		i++
		if i >= len(s) || !isDigit(s[i]) {
			return nil, jsonErr()
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || !isDigit(s[i]) {
			return nil, jsonErr()
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i < len(s) && isJSONIdent(s[i]) {
		return nil, jsonErr()
	}
	d, err := parseNumeric(s[:i])
	if err != nil {
		return nil, err
	}
	p.s = s[i:]
	// jsonb compares numbers as numeric: {"a":1.0} = {"a":1}.
	return &jnode{kind: '0', str: string(d.normalized().appendText(nil))}, nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		v, ok := Unhex(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

func (p *jparser) string() (string, error) {
	s := p.s[1:]
	var b strings.Builder
	for {
		if len(s) == 0 {
			return "", jsonErr()
		}
		c := s[0]
		switch {
		case c == '"':
			p.s = s[1:]
			return b.String(), nil
		case c < 0x20:
			return "", jsonErr() // control characters must be escaped
		case c == '\\':
			if len(s) < 2 {
				return "", jsonErr()
			}
			switch s[1] {
			case '"', '\\', '/':
				b.WriteByte(s[1])
			case 'b', 'f', 'n', 'r', 't':
				b.WriteByte("\b\f\n\r\t"[strings.IndexByte("bfnrt", s[1])])
			case 'u':
				r, ok := hex4(s[2:])
				if !ok {
					return "", jsonErr()
				}
				s = s[6:]
				switch {
				case r == 0:
					return "", pgerr.New(pgerr.UntranslatableCharacter, "unsupported Unicode escape sequence in jsonb")
				case utf16.IsSurrogate(r) && r < 0xDC00:
					if len(s) < 2 || s[0] != '\\' || s[1] != 'u' {
						return "", jsonErr()
					}
					r2, ok := hex4(s[2:])
					if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
						return "", jsonErr()
					}
					s = s[6:]
					r = utf16.DecodeRune(r, r2)
				case utf16.IsSurrogate(r):
					return "", jsonErr()
				}
				b.WriteRune(r)
				continue
			default:
				return "", jsonErr()
			}
			s = s[2:]
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRune(s)
			if r == utf8.RuneError && n <= 1 {
				return "", jsonErr()
			}
			b.Write(s[:n])
			s = s[n:]
		default:
			b.WriteByte(c)
			s = s[1:]
		}
	}
}

// sortKeys orders keys as PostgreSQL's jsonb does (length, then bytes) and
// keeps the last value of duplicate keys.
func (n *jnode) sortKeys() {
	idx := make([]int, len(n.keys))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ka, kb := n.keys[a], n.keys[b]
		if len(ka) != len(kb) {
			return len(ka) - len(kb)
		}
		return strings.Compare(ka, kb)
	})
	keys := make([]string, 0, len(idx))
	vals := make([]*jnode, 0, len(idx))
	for i, j := range idx {
		if i+1 < len(idx) && n.keys[idx[i+1]] == n.keys[j] {
			continue // a later duplicate wins
		}
		keys = append(keys, n.keys[j])
		vals = append(vals, n.vals[j])
	}
	n.keys, n.vals = keys, vals
}

func (n *jnode) appendTo(dst []byte) []byte {
	switch n.kind {
	case '{':
		dst = append(dst, '{')
		for i, k := range n.keys {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendJSONString(dst, k)
			dst = append(dst, ": "...)
			dst = n.vals[i].appendTo(dst)
		}
		return append(dst, '}')
	case '[':
		dst = append(dst, '[')
		for i, v := range n.vals {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = v.appendTo(dst)
		}
		return append(dst, ']')
	case '"':
		return appendJSONString(dst, n.str)
	case '0':
		return append(dst, n.str...)
	case 't':
		return append(dst, "true"...)
	case 'f':
		return append(dst, "false"...)
	}
	return append(dst, "null"...)
}

func appendJSONString(dst []byte, s string) []byte {
	const hexdigits = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\b':
			dst = append(dst, `\b`...)
		case '\f':
			dst = append(dst, `\f`...)
		case '\n':
			dst = append(dst, `\n`...)
		case '\r':
			dst = append(dst, `\r`...)
		case '\t':
			dst = append(dst, `\t`...)
		case '"':
			dst = append(dst, `\"`...)
		case '\\':
			dst = append(dst, `\\`...)
		default:
			if c < 0x20 {
				dst = append(dst, '\\', 'u', '0', '0', hexdigits[c>>4], hexdigits[c&15])
			} else {
				dst = append(dst, c)
			}
		}
	}
	return append(dst, '"')
}

func jsonbIn(_ Codec, dst, src []byte) ([]byte, error) {
	if err := checkText(src); err != nil {
		return nil, err
	}
	p := jparser{s: src}
	n, err := p.value()
	if err != nil {
		return nil, err
	}
	p.ws()
	if len(p.s) != 0 {
		return nil, jsonErr()
	}
	return n.appendTo(dst), nil
}

func jsonbRecv(dst, src []byte) ([]byte, error) {
	if len(src) == 0 || src[0] != 1 {
		return nil, binaryErr("jsonb")
	}
	return jsonbIn(Codec{}, dst, src[1:])
}

func jsonbSend(dst, canon []byte) ([]byte, error) {
	dst = append(dst, 1)
	return append(dst, canon...), nil
}

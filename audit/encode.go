package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strconv"
	"unicode/utf8"
)

// appendCanonical appends e's canonical bytes: the JSON object of its
// fields in contract order, without hash. It writes what encoding/json
// would (SetEscapeHTML(false)) — the reader decodes it with encoding/json —
// without reflection, since it runs once per event on the writer.
func (e *Event) appendCanonical(b []byte) []byte {
	b = append(b, `{"v":`...)
	v := e.V
	if v == 0 {
		v = Version
	}
	b = strconv.AppendInt(b, int64(v), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = appendMembers(b, member{"ts", e.TS}, member{"instance", e.Instance}, member{"session", e.Session}, member{"db_user", e.DBUser})
	b = appendList(b, "roles", e.Roles)
	b = appendMembers(b, member{"end_user", e.EndUser}, member{"application", e.Application}, member{"client", e.Client}, member{"database", e.Database})
	b = append(b, `,"tls":`...)
	b = strconv.AppendBool(b, e.TLS)
	b = appendMembers(b, member{"action", e.Action})
	b = appendList(b, "relations", e.Relations)
	b = appendList(b, "columns", e.Columns)
	b = appendMembers(b, member{"decision", e.Decision}, member{"reason", e.Reason}, member{"fingerprint", e.Fingerprint}, member{"query", e.Query})
	b = append(b, `,"rows":`...)
	if e.Rows == nil {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendInt(b, *e.Rows, 10)
	}
	b = appendMembers(b, member{"error", e.Error})
	if e.BreakGlass {
		b = append(b, `,"break_glass":true`...)
	}
	b = appendSet(b, member{"role", e.Role})
	if len(e.Context) > 0 {
		b = append(b, `,"context":{`...)
		for i, k := range slices.Sorted(maps.Keys(e.Context)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Context[k])
		}
		b = append(b, '}')
	}
	b = appendSet(b, member{"protocol", e.Protocol})
	if e.Ref != 0 {
		b = append(b, `,"ref":`...)
		b = strconv.AppendUint(b, e.Ref, 10)
	}
	if e.Clean != nil {
		b = append(b, `,"clean":`...)
		b = strconv.AppendBool(b, *e.Clean)
	}
	b = appendSet(b, member{"detail", e.Detail}, member{"signature", e.Signature})
	if e.KeyID != 0 {
		b = append(b, `,"key_id":`...)
		b = strconv.AppendUint(b, uint64(e.KeyID), 10)
	}
	b = appendMembers(b, member{"prev", e.Prev})
	return append(b, '}')
}

// member is one string member of the canonical object, in contract order.
type member struct{ name, val string }

// appendMembers appends each member as `,"name":"val"`.
func appendMembers(b []byte, ms ...member) []byte {
	for _, m := range ms {
		b = append(b, ',', '"')
		b = append(b, m.name...)
		b = append(b, '"', ':')
		b = appendString(b, m.val)
	}
	return b
}

// appendSet appends the members whose value is set: the optional ones
// (omitempty in Event's JSON tags).
func appendSet(b []byte, ms ...member) []byte {
	for _, m := range ms {
		if m.val != "" {
			b = appendMembers(b, m)
		}
	}
	return b
}

func appendList(b []byte, name string, vals []string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":[`...)
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// with SetEscapeHTML(false): control characters, quote, backslash,
// invalid UTF-8 (as U+FFFD) and U+2028/U+2029.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendLine appends the event's line: canonical bytes with the hash
// member, and sets e.Hash.
func (e *Event) appendLine(dst []byte) ([]byte, error) {
	if len(e.Prev) != 64 {
		return dst, errors.New("audit: event without prev")
	}
	start := len(dst)
	dst = e.appendCanonical(dst)
	sum := sha256.Sum256(dst[start:])
	var h [64]byte
	hex.Encode(h[:], sum[:])
	e.Hash = string(h[:])
	dst = dst[:len(dst)-1]
	dst = append(dst, `,"hash":"`...)
	dst = append(dst, h[:]...)
	return append(dst, `"}`...), nil
}

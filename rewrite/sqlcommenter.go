package rewrite

import "strings"

// sqlcommenter tags (/*key='value',…*/) in a statement's comments: the
// end_user tag for audit attribution, and every tag for the Observer,
// which keeps only allow-listed keys.

// endUserTag returns the sqlcommenter end_user value of the last comment
// that has one.
func endUserTag(sql string) string {
	out := ""
	// Only real comments count: a tag-shaped text inside a string literal
	// (an inlined value) must not set or blank the audit attribution.
	scanText(sql, 0, func(k tokenKind, start, end int) bool {
		if k == tokComment && sql[start+1] == '*' {
			if v, ok := endUserIn(sql[start:end]); ok {
				out = v
			}
		}
		return true
	})
	return out
}

// Tag is one sqlcommenter tag (key='value'), URL-decoded.
type Tag struct{ Key, Value string }

// commentTags returns the sqlcommenter tags of the text's block comments,
// in text order (a tag-shaped text inside a string literal is not one).
// What they hold is the application's: an Observer keeps only the keys it
// allow-lists, since a comment could carry PHI.
func commentTags(sql string) []Tag {
	var out []Tag
	scanText(sql, 0, func(k tokenKind, start, end int) bool {
		if k == tokComment && sql[start+1] == '*' && end-start >= 4 {
			out = appendTags(out, sql[start+2:end-2])
		}
		return true
	})
	return out
}

// appendTags parses key='value' pairs separated by commas from one
// comment body; a body that is not in that form adds nothing.
func appendTags(out []Tag, body string) []Tag {
	n := len(out)
	i := 0
	for {
		for i < len(body) && (body[i] == ' ' || body[i] == ',') {
			i++
		}
		if i >= len(body) {
			return out
		}
		eq := strings.IndexByte(body[i:], '=')
		if eq <= 0 || i+eq+1 >= len(body) || body[i+eq+1] != '\'' {
			return out[:n]
		}
		key := strings.TrimSpace(body[i : i+eq])
		j := i + eq + 2
		var b strings.Builder
		closed := false
		for ; j < len(body); j++ {
			if body[j] == '\\' && j+1 < len(body) {
				j++
				b.WriteByte(body[j])
				continue
			}
			if body[j] == '\'' {
				closed = true
				j++
				break
			}
			b.WriteByte(body[j])
		}
		if !closed {
			return out[:n]
		}
		out = append(out, Tag{Key: percentDecode(key), Value: percentDecode(b.String())})
		i = j
	}
}

// endUserIn reads a sqlcommenter end_user='…' tag from one comment body.
func endUserIn(body string) (string, bool) {
	p := strings.Index(body, "end_user='")
	if p < 0 {
		return "", false
	}
	v := body[p+len("end_user='"):]
	var b strings.Builder
	for j := 0; j < len(v); j++ {
		if v[j] == '\\' && j+1 < len(v) {
			j++
			b.WriteByte(v[j])
			continue
		}
		if v[j] == '\'' {
			break
		}
		b.WriteByte(v[j])
	}
	return percentDecode(b.String()), true
}

func percentDecode(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

package rewrite

import (
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The literal-shape tier of the plan cache.
//
// With the simple protocol, clients inline values into the SQL text, so
// every statement text is new and misses the exact-text cache. Two texts
// that differ only in the values of their string and numeric literals parse
// to the same tree except for those constants, and the analysis of a data
// statement does not look at a constant's value (where it does, the
// analyzer marks the statement literalDependent). So on an exact-text miss
// the text is lexed into a shape key — the text with each literal replaced
// by a marker of its lexical kind, everything else (comments included: a
// sqlcommenter end_user tag lives there) byte for byte — and a plan cached
// under that key is re-bound to the new text's literals: slot texts come
// from the new literals, every offset moves by the length differences of
// the literals before it.
//
// Only provably safe plans become templates (newShapeTemplate): PHI plans
// whose statements are SELECT/INSERT/UPDATE/DELETE with no session effect,
// no COPY/EXPLAIN/PREPARE/EXECUTE, no offset inside a literal, and every
// slot bound to exactly one literal (or to none: TRUE/FALSE). Refusals are
// never shape-cached (their positions and messages may depend on
// literals). Anything the lexer does not fully understand (U& strings,
// string continuation, escapes that produce non-ASCII bytes, PostgreSQL 16
// number forms such as 0x1F or 1_000, unterminated tokens, NUL bytes) is
// planned in full. Re-binding fails closed: any inconsistency plans in
// full.

// Lexical kinds of literals in a shape key.
const (
	litString byte = 's' // '…' (standard_conforming_strings = on)
	litEscape byte = 'e' // E'…'
	litDollar byte = 'd' // $tag$…$tag$
	litBit    byte = 'b' // B'…'
	litHex    byte = 'x' // X'…'
	litInt    byte = 'i' // an integer that fits int32: the parser's ICONST
	litFloat  byte = 'f' // a decimal, a real, or a larger integer: FCONST
)

// literal is one string or numeric literal token: sql[start:end].
type literal struct {
	start, end int
	kind       byte
}

// shapeMark starts a literal marker in a shape key; PostgreSQL query text
// cannot hold a NUL byte, and shapeOf refuses text that does.
const shapeMark = '\x00'

// shapeOf lexes sql following PostgreSQL's lexical rules and returns its
// shape key and literals, or ok=false when the text is not a candidate for
// the shape tier.
func shapeOf(sql string) (key string, lits []literal, ok bool) {
	if !utf8.ValidString(sql) || strings.IndexByte(sql, 0) >= 0 {
		return "", nil, false
	}
	n := len(sql)
	i := 0
	for i < n {
		c := sql[i]
		switch {
		case c == '-' && i+1 < n && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				i = n
			} else {
				i += j
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			end, ok := blockCommentEnd(sql, i)
			if !ok {
				return "", nil, false
			}
			i = end
		case c == '\'':
			end, ok := stringTokenEnd(sql, i, false)
			if !ok {
				return "", nil, false
			}
			lits = append(lits, literal{i, end, litString})
			i = end
		case c == '"':
			end, ok := quotedEnd(sql, i, '"', false)
			if !ok {
				return "", nil, false
			}
			i = end
		case c == '$':
			j := i + 1
			if j < n && isDigit(sql[j]) {
				// $n: a parameter, part of the shape.
				for j < n && isDigit(sql[j]) {
					j++
				}
				if j < n && isIdentByte(sql[j]) {
					return "", nil, false
				}
				i = j
				continue
			}
			if j < n && isIdentStart(sql[j]) {
				for j < n && isIdentByte(sql[j]) && sql[j] != '$' {
					j++
				}
			}
			if j >= n || sql[j] != '$' {
				return "", nil, false
			}
			tag := sql[i : j+1]
			k := strings.Index(sql[j+1:], tag)
			if k < 0 {
				return "", nil, false
			}
			end := j + 1 + k + len(tag)
			lits = append(lits, literal{i, end, litDollar})
			i = end
		case isIdentStart(c):
			j := i
			for j < n && isIdentByte(sql[j]) {
				j++
			}
			if j == i+1 && j < n {
				switch {
				case (c == 'u' || c == 'U') && sql[j] == '&':
					// U&'…' and U&"…" (with UESCAPE) are not shaped.
					return "", nil, false
				case sql[j] == '\'':
					kind := byte(0)
					switch c | 0x20 {
					case 'e':
						kind = litEscape
					case 'b':
						kind = litBit
					case 'x':
						kind = litHex
					}
					if kind != 0 {
						end, ok := stringTokenEnd(sql, j, kind == litEscape)
						if kind == litBit || kind == litHex {
							end, ok = bitStringEnd(sql, j)
						}
						if !ok {
							return "", nil, false
						}
						lits = append(lits, literal{i, end, kind})
						i = end
						continue
					}
					// N'…' is NCHAR '…'; any other one-letter word is a
					// type name before a standard string: the string is
					// lexed next.
				}
			}
			i = j
		case isDigit(c) || c == '.' && i+1 < n && isDigit(sql[i+1]):
			end, kind, ok := numberEnd(sql, i)
			if !ok {
				return "", nil, false
			}
			lits = append(lits, literal{i, end, kind})
			i = end
		default:
			i++
		}
	}
	if len(lits) == 0 {
		return sql, nil, true
	}
	var b strings.Builder
	b.Grow(len(sql))
	last := 0
	for _, l := range lits {
		b.WriteString(sql[last:l.start])
		b.WriteByte(shapeMark)
		b.WriteByte(l.kind)
		last = l.end
	}
	b.WriteString(sql[last:])
	return b.String(), lits, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// numberEnd lexes a numeric literal at sql[i] (PostgreSQL 15 forms only:
// digits, a decimal point, an exponent). Anything glued to it (0x1F,
// 1_000, 1..2, 12abc) is not shaped: PostgreSQL 15 and 16 read those
// differently, or refuse them.
func numberEnd(sql string, i int) (int, byte, bool) {
	n := len(sql)
	j := i
	for j < n && isDigit(sql[j]) {
		j++
	}
	float := false
	if j < n && sql[j] == '.' {
		if j+1 < n && sql[j+1] == '.' {
			return 0, 0, false
		}
		float = true
		j++
		for j < n && isDigit(sql[j]) {
			j++
		}
	}
	if j < n && (sql[j] == 'e' || sql[j] == 'E') {
		k := j + 1
		if k < n && (sql[k] == '+' || sql[k] == '-') {
			k++
		}
		if k >= n || !isDigit(sql[k]) {
			return 0, 0, false
		}
		for k < n && isDigit(sql[k]) {
			k++
		}
		j = k
		float = true
	}
	if j < n && (isIdentByte(sql[j]) || sql[j] == '.') {
		return 0, 0, false
	}
	if !float {
		if _, err := strconv.ParseInt(sql[i:j], 10, 32); err == nil {
			return j, litInt, true
		}
	}
	return j, litFloat, true
}

// blockCommentEnd returns the end of the (nested) comment at sql[i].
func blockCommentEnd(sql string, i int) (int, bool) {
	depth := 0
	for j := i; j+1 < len(sql); {
		switch {
		case sql[j] == '/' && sql[j+1] == '*':
			depth++
			j += 2
		case sql[j] == '*' && sql[j+1] == '/':
			depth--
			j += 2
			if depth == 0 {
				return j, true
			}
		default:
			j++
		}
	}
	return 0, false
}

// quotedEnd returns the end of the token quoted with q at sql[i] (q doubled
// inside; backslash escapes when bs).
func quotedEnd(sql string, i int, q byte, bs bool) (int, bool) {
	for j := i + 1; j < len(sql); j++ {
		c := sql[j]
		if bs && c == '\\' {
			j++
			continue
		}
		if c == q {
			if j+1 < len(sql) && sql[j+1] == q {
				j++
				continue
			}
			return j + 1, true
		}
	}
	return 0, false
}

// stringTokenEnd is quotedEnd for a string at sql[i] == '\”. A string
// followed (after whitespace or comments) by another quote is either
// SQL-standard continuation across lines or a syntax error: not shaped.
func stringTokenEnd(sql string, i int, bs bool) (int, bool) {
	end, ok := quotedEnd(sql, i, '\'', bs)
	if !ok {
		return 0, false
	}
	if k := skipSpace(sql, end); k < len(sql) && sql[k] == '\'' {
		return 0, false
	}
	return end, true
}

// bitStringEnd is stringTokenEnd for the body of a bit or hex string
// (B or X before the quote at sql[i]): PostgreSQL's lexer has no doubled
// quote there, so B, four quotes, is an empty bit string followed by an
// empty string (a syntax error), not a bit string holding a quote.
func bitStringEnd(sql string, i int) (int, bool) {
	k := strings.IndexByte(sql[i+1:], '\'')
	if k < 0 {
		return 0, false
	}
	end := i + 1 + k + 1
	if k := skipSpace(sql, end); k < len(sql) && sql[k] == '\'' {
		return 0, false
	}
	return end, true
}

// literalValue is the constant the parser makes of a literal: the
// unescaped string value, the integer in decimal, or a float's text as
// written. ok is false for bit strings and escapes the shape tier does not
// decode.
func literalValue(sql string, l literal) (string, bool) {
	tok := sql[l.start:l.end]
	switch l.kind {
	case litString:
		return strings.ReplaceAll(tok[1:len(tok)-1], "''", "'"), true
	case litEscape:
		return unescapeE(tok[2 : len(tok)-1])
	case litDollar:
		t := strings.IndexByte(tok[1:], '$') + 2
		return tok[t : len(tok)-t], true
	case litInt:
		v, err := strconv.ParseInt(tok, 10, 32)
		if err != nil {
			return "", false
		}
		return strconv.FormatInt(v, 10), true
	case litFloat:
		return tok, true
	}
	return "", false
}

// negated is the constant after the parser folds a unary minus into it
// (gram.y doNegate): an integer is negated, a float's text gains a '-'.
func negated(v string, kind byte) (string, bool) {
	switch kind {
	case litInt:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return "", false
		}
		return strconv.FormatInt(-n, 10), true
	case litFloat:
		if strings.HasPrefix(v, "-") {
			return v[1:], true
		}
		return "-" + v, true
	}
	return "", false
}

// unescapeE decodes the body of an E'…' string as PostgreSQL's scanner
// does. Escapes that give a NUL or non-ASCII byte, and Unicode escapes,
// are left to the full planner.
func unescapeE(s string) (string, bool) {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\'' {
			// '' (quotedEnd guarantees the pair).
			i++
			b.WriteByte('\'')
			continue
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			return "", false
		}
		c = s[i]
		switch c {
		case 'b', 'f', 'n', 'r', 't':
			b.WriteByte("\b\f\n\r\t"[strings.IndexByte("bfnrt", c)])
		case 'u', 'U':
			return "", false
		case 'x':
			v, k := 0, 0
			for k < 2 && i+1 < len(s) && isHex(s[i+1]) {
				v = v<<4 | int(unhex(s[i+1]))
				i++
				k++
			}
			if k == 0 {
				b.WriteByte('x')
				continue
			}
			if v == 0 || v >= 0x80 {
				return "", false
			}
			b.WriteByte(byte(v))
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(c - '0')
			for k := 1; k < 3 && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '7'; k++ {
				v = v<<3 | int(s[i+1]-'0')
				i++
			}
			if v == 0 || v >= 0x80 {
				return "", false
			}
			b.WriteByte(byte(v))
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// shapeTemplate is a plan that can be re-bound to any text of the same
// shape.
type shapeTemplate struct {
	plan      *Plan
	lits      []literal
	needParse bool
	// mentions is the per-statement result of the lexical pre-check, which
	// decides which statements are analyzed: it may depend on literals.
	mentions []bool
	binds    [][]slotBind
	// work counts the literals newShapeTemplate examined to bind slots
	// (bounded by shapeWorkBudget).
	work int
}

// shapeWorkBudget bounds the literals newShapeTemplate examines for a
// statement: each literal belongs to at most one slot, so a few times the
// literal count is generous; past it the text is simply not shape-cached.
func shapeWorkBudget(lits int) int { return 4*lits + 16 }

// slotBind ties a template slot to the literal that gives its text (lit
// -1: the slot holds no literal, e.g. TRUE, and keeps its text); neg when
// the parser folded an odd number of unary minus signs into it.
type slotBind struct {
	lit int
	neg bool
}

// shapeEligible reports whether a plan may serve as a template.
func shapeEligible(pl *Plan) bool {
	if pl == nil || pl.PassThrough || len(pl.Statements) == 0 {
		return false
	}
	for _, st := range pl.Statements {
		switch st.Tag {
		case "SELECT", "INSERT", "UPDATE", "DELETE":
		default:
			return false
		}
		if st.Effects != 0 || st.Copy != nil || st.Execute != nil || st.Prepare != "" || st.Deallocate != "" ||
			st.Explain || st.SearchPath != "" || st.SetEndUser != "" || st.literalDependent || st.StateUnknown || st.TempCreate != "" {
			return false
		}
	}
	return true
}

// newShapeTemplate checks that pl (the full plan of its own SQL, whose
// literals are lits) can be re-bound, and records how.
func (p *Planner) newShapeTemplate(pl *Plan, lits []literal) (*shapeTemplate, bool) {
	if !shapeEligible(pl) {
		return nil, false
	}
	sql := pl.SQL
	_, needParse := p.ix.precheck(sql)
	t := &shapeTemplate{plan: pl, lits: lits, needParse: needParse}
	outside := func(pos int) bool { _, ok := mapPos(pos, lits, lits); return ok }
	for _, st := range pl.Statements {
		if !outside(st.Offset) || !outside(st.Offset+st.Length) || st.Offset+st.Length > len(sql) {
			return nil, false
		}
		m, _ := p.ix.precheck(sql[st.Offset : st.Offset+st.Length])
		t.mentions = append(t.mentions, m)
		for _, e := range st.Edits {
			if !outside(e.Offset) || !outside(e.Offset+e.Length) {
				return nil, false
			}
		}
		binds := make([]slotBind, len(st.Slots))
		for k, s := range st.Slots {
			end := s.Offset + s.Length
			if !outside(s.Offset) || !outside(end) {
				return nil, false
			}
			// The literal that gives the slot its text is the one, inside
			// the slot's range, whose value (or negation) is the slot's
			// text; a slot with two candidates (CAST(-2 AS numeric(10,2)))
			// or with an ambiguous sign (0) is not shaped.
			bind := slotBind{lit: -1}
			found := 0
			// lits are sorted and disjoint: those inside the slot are one
			// run, found by binary search, so the whole loop is linear in
			// the number of literals (not slots × literals).
			first := sort.Search(len(lits), func(i int) bool { return lits[i].start >= s.Offset })
			for li := first; li < len(lits) && lits[li].end <= end; li++ {
				l := lits[li]
				t.work++
				if t.work > shapeWorkBudget(len(lits)) {
					return nil, false
				}
				found++
				v, ok := literalValue(sql, l)
				if !ok {
					continue
				}
				nv, nok := negated(v, l.kind)
				plain, neg := v == s.Text, nok && nv == s.Text
				if plain && neg || !plain && !neg {
					continue
				}
				if bind.lit >= 0 {
					return nil, false
				}
				bind = slotBind{lit: li, neg: neg}
			}
			if bind.lit < 0 {
				if found > 0 {
					return nil, false
				}
				// No literal in the slot: its text comes from a keyword.
				w := strings.ToLower(strings.TrimSpace(sql[s.Offset:end]))
				if w != "true" && w != "false" {
					return nil, false
				}
			}
			binds[k] = bind
		}
		t.binds = append(t.binds, binds)
	}
	return t, true
}

// mapPos moves a position of the template text (literals old) to the text
// with literals new (same count and kinds): by the length differences of
// the literals before it. A position inside a literal cannot be mapped.
func mapPos(pos int, old, new []literal) (int, bool) {
	i := sort.Search(len(old), func(i int) bool { return old[i].end > pos })
	if i < len(old) && old[i].start < pos {
		return 0, false
	}
	if i == 0 {
		return pos, true
	}
	return pos + new[i-1].end - old[i-1].end, true
}

// bind returns the plan of sql (same shape as the template, literals lits)
// or ok=false when anything does not line up.
func (t *shapeTemplate) bind(p *Planner, sql string, lits []literal) (*Plan, bool) {
	if len(lits) != len(t.lits) {
		return nil, false
	}
	for i := range lits {
		if lits[i].kind != t.lits[i].kind {
			return nil, false
		}
		// An E'…' literal that no slot takes must still be one the parser
		// accepts: E'\0' (a NUL byte) does not parse, and the full planner
		// refuses it.
		if lits[i].kind == litEscape {
			if _, ok := literalValue(sql, lits[i]); !ok {
				return nil, false
			}
		}
	}
	if m, np := p.ix.precheck(sql); !m || np != t.needParse {
		return nil, false
	}
	mp := func(pos int) (int, bool) {
		v, ok := mapPos(pos, t.lits, lits)
		return v, ok && v >= 0 && v <= len(sql)
	}
	// span maps the run of *n bytes at *o in the template's text to its
	// offset and length in sql, in place.
	span := func(o, n *int) bool {
		so, ok1 := mp(*o)
		se, ok2 := mp(*o + *n)
		*o, *n = so, se-so
		return ok1 && ok2 && se >= so
	}
	out := &Plan{SQL: sql, Statements: make([]*Statement, len(t.plan.Statements))}
	for i, ts := range t.plan.Statements {
		st := *ts
		if !span(&st.Offset, &st.Length) {
			return nil, false
		}
		text := sql[st.Offset : st.Offset+st.Length]
		if m, _ := p.ix.precheck(text); m != t.mentions[i] {
			return nil, false
		}
		st.audit = nil
		if st.TouchesPHI {
			st.audit = &auditText{text: text}
		}
		if len(ts.Slots) > 0 {
			st.Slots = make([]Slot, len(ts.Slots))
			for k, s := range ts.Slots {
				if !span(&s.Offset, &s.Length) {
					return nil, false
				}
				if b := t.binds[i][k]; b.lit >= 0 {
					v, ok := literalValue(sql, lits[b.lit])
					if ok && b.neg {
						v, ok = negated(v, lits[b.lit].kind)
					}
					if !ok {
						return nil, false
					}
					s.Text = v
				}
				st.Slots[k] = s
			}
		}
		if len(ts.Edits) > 0 {
			st.Edits = make([]Edit, len(ts.Edits))
			for k, e := range ts.Edits {
				if !span(&e.Offset, &e.Length) {
					return nil, false
				}
				st.Edits[k] = e
			}
		}
		out.Statements[i] = &st
	}
	out.EndUser = endUserTag(sql)
	out.Tags = commentTags(sql)
	return out, true
}

// planShaped plans sql on an exact-text miss, through the literal-shape
// tier; hit reports that a template was re-bound (for tests).
func (p *Planner) planShaped(sql string, sess Session, k cacheKey) (pl *Plan, hit bool, err error) {
	if m, _ := p.ix.precheck(sql); !m {
		// No PHI name: pass-through, or statements that need no analysis.
		pl, err = p.plan(sql, sess)
		return pl, false, err
	}
	key, lits, ok := shapeOf(sql)
	if !ok {
		pl, err = p.plan(sql, sess)
		return pl, false, err
	}
	sk := k
	sk.sql, sk.shape = key, true
	if e, ok := p.cache.get(sk); ok && e.tmpl != nil {
		if pl, ok := e.tmpl.bind(p, sql, lits); ok {
			return pl, true, nil
		}
	}
	pl, err = p.plan(sql, sess)
	if err == nil {
		if t, ok := p.newShapeTemplate(pl, lits); ok {
			p.cache.putShape(sk, t)
		}
	}
	return pl, false, err
}

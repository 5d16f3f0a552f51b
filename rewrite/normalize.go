package rewrite

import (
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// normalizeSQL is the statement text the audit trail may hold: every
// constant replaced by $n, every comment removed. It works on PostgreSQL's
// own lexer (pg_query Scan), not on the parse tree: every value a statement
// text can carry is a constant token, so none survives, whatever the
// grammar makes of the tokens around it. (pg_query's Normalize replaces the
// constants the parse tree locates, and leaves the digits of "- -7" and of
// "-/* sign */7" in the text.) A minus sign directly before a number, where
// an operand is expected, is taken into the placeholder. The numbering
// starts after the highest $n the text already holds. The result is "" when
// the text does not lex: nothing is better than a text that may hold a
// value.
func normalizeSQL(text string) string {
	sr, err := pg.Scan(text)
	if err != nil {
		return ""
	}
	toks := sr.GetTokens()
	next := 1
	for _, t := range toks {
		if t.Token == pg.Token_PARAM {
			if n, err := strconv.Atoi(text[t.Start+1 : t.End]); err == nil && n >= next {
				next = n + 1
			}
		}
	}
	var b strings.Builder
	b.Grow(len(text))
	last := 0 // end of the text copied so far
	placeholder := func(start, end int) {
		b.WriteString(text[last:start])
		if o := b.String(); o != "" && isIdentByte(o[len(o)-1]) {
			b.WriteByte(' ') // date'2020-01-01', or two literals glued: $1$2 would not lex
		}
		b.WriteString("$" + strconv.Itoa(next))
		next++
		last = end
		if end < len(text) && isIdentByte(text[end]) {
			b.WriteByte(' ') // 'x'b is 'x' AS b; $1b would not lex
		}
	}
	operand := false         // the previous token ends an operand
	var prev, prev2 pg.Token // the two tokens before this one, comments aside
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		start, end := int(t.Start), int(t.End)
		if end <= start && isConstToken(t.Token) {
			// pg_query's scanner gives U&'…' strings an empty extent.
			if t.Token != pg.Token_USCONST || start+2 >= len(text) || text[start+1] != '&' {
				return ""
			}
			if end = stringEnd(text, start+2, false); end < 0 {
				return ""
			}
		}
		if start < last || end > len(text) {
			return "" // extents that overlap: fail closed
		}
		if t.Token == pg.Token_SQL_COMMENT || t.Token == pg.Token_C_COMMENT {
			b.WriteString(text[last:start])
			// Keep the neighbours apart: "a/*x*/b" is two words.
			if end < len(text) && start > 0 && !isSpace(text[start-1]) && !isSpace(text[end]) {
				b.WriteByte(' ')
			}
			last = end
			continue
		}
		switch {
		case t.Token == pg.Token_ASCII_45 && !operand && i+1 < len(toks) && isNumberToken(toks[i+1].Token):
			// A sign directly before its number (blanks between them go
			// too): one placeholder for both.
			placeholder(start, int(toks[i+1].End))
			i++
			operand = true
		case isConstToken(t.Token):
			placeholder(start, end)
			operand = true
		case (t.Token == pg.Token_TRUE_P || t.Token == pg.Token_FALSE_P || t.Token == pg.Token_NULL_P) &&
			!(prev == pg.Token_IS || prev == pg.Token_NOT && prev2 == pg.Token_IS):
			// TRUE, FALSE and NULL are values too (SET hiv_positive =
			// TRUE); after IS [NOT] they are part of a test.
			placeholder(start, end)
			operand = true
		default:
			operand = endsOperand(t)
		}
		prev, prev2 = t.Token, prev
	}
	b.WriteString(text[last:])
	return strings.Trim(collapseBlankLines(b.String()), asciiSpace)
}

func isNumberToken(t pg.Token) bool { return t == pg.Token_ICONST || t == pg.Token_FCONST }

func isConstToken(t pg.Token) bool {
	switch t {
	case pg.Token_ICONST, pg.Token_FCONST, pg.Token_SCONST, pg.Token_USCONST, pg.Token_BCONST, pg.Token_XCONST:
		return true
	}
	return false
}

// endsOperand reports whether a token can end an operand, so that a minus
// sign after it is the binary operator: a name, a constant, a parameter, a
// closing bracket, or a keyword that is not reserved (those are names to
// the grammar, or values such as NULL and TRUE, or end a subexpression).
func endsOperand(t *pg.ScanToken) bool {
	switch t.Token {
	case pg.Token_IDENT, pg.Token_UIDENT, pg.Token_PARAM, pg.Token_ASCII_41, pg.Token_ASCII_93:
		return true
	}
	if isConstToken(t.Token) {
		return true
	}
	switch t.KeywordKind {
	case pg.KeywordKind_UNRESERVED_KEYWORD, pg.KeywordKind_COL_NAME_KEYWORD, pg.KeywordKind_TYPE_FUNC_NAME_KEYWORD:
		return true
	case pg.KeywordKind_RESERVED_KEYWORD:
		// NULL, TRUE, FALSE, CURRENT_DATE, … and END (of CASE) end an
		// operand; SELECT, WHERE, AND, THEN, … do not. Unary minus after
		// one of the former would be a syntax error anyway, so treating
		// all reserved words as "not an operand" only folds a sign into a
		// placeholder that PostgreSQL would have refused.
		return false
	}
	return false
}

// asciiSpace is what PostgreSQL's lexer takes for white space; other
// Unicode spaces are identifier bytes to it.
const asciiSpace = " \t\n\r\f\v"

// collapseBlankLines drops the lines a removed line comment leaves empty.
func collapseBlankLines(s string) string {
	if !strings.Contains(s, "\n") {
		return s
	}
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		if strings.Trim(l, asciiSpace) == "" {
			continue
		}
		out = append(out, strings.TrimRight(l, " \t\r"))
	}
	return strings.Join(out, "\n")
}

// pg16Number returns the 1-based position of the first numeric literal in
// sql written in a form PostgreSQL 16 added (0x1F, 0o17, 0b101, 1_000), or
// 0. phiproxy's parser follows the PostgreSQL 16 grammar, but a PostgreSQL
// 15 server reads "0x1F" as the number 0 followed by the alias x1F: the
// proxy and the server would disagree on what the statement says.
func pg16Number(sql string) int {
	if !mayHavePG16Number(sql) {
		return 0
	}
	sr, err := pg.Scan(sql)
	if err != nil {
		return 0
	}
	for _, t := range sr.GetTokens() {
		if !isNumberToken(t.Token) {
			continue
		}
		lit := sql[t.Start:t.End]
		if strings.IndexByte(lit, '_') >= 0 || len(lit) > 1 && lit[0] == '0' && strings.IndexByte("xXoObB", lit[1]) >= 0 {
			return int(t.Start) + 1
		}
	}
	return 0
}

// mayHavePG16Number is the cheap byte scan in front of pg16Number: a digit
// followed by '_', or "0" followed by a radix letter.
func mayHavePG16Number(sql string) bool {
	for i := 0; i+1 < len(sql); i++ {
		if !isDigit(sql[i]) {
			continue
		}
		switch sql[i+1] {
		case '_':
			return true
		case 'x', 'X', 'o', 'O', 'b', 'B':
			if sql[i] == '0' {
				return true
			}
		}
	}
	return false
}

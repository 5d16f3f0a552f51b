package rewrite

import "strings"

// This file holds the small lexical tools: the pass-through pre-check that
// runs on every statement before any parsing, and the token extents the
// parse tree does not give (a literal's end, a type name's end).

// nameIndex is the set of words whose presence sends a statement to the
// full planner: PHI relation names, views and functions over them, and a few
// functions that run SQL given as text.
type nameIndex struct {
	// words maps folded names (identifier characters only) to what they
	// are: wordPHI, or wordCatalog for a catalog the overlay serves
	// (overlay.go), which sends text to the parser but is no PHI mention.
	words map[string]uint8
	// odd holds folded names containing other characters (spaces, quotes):
	// checked by case-insensitive substring search.
	odd []string
}

// Kinds of words in a nameIndex.
const (
	wordPHI     uint8 = 1 << iota // a PHI name: the statement is planned
	wordCatalog                   // a catalog the overlay serves
)

func (ix *nameIndex) add(name string) { ix.addKind(name, wordPHI) }

func (ix *nameIndex) addKind(name string, kind uint8) {
	f := strings.ToLower(name)
	if len(f) > maxIdentLen {
		f = f[:maxIdentLen]
	}
	for i := 0; i < len(f); i++ {
		if !isIdentByte(f[i]) {
			if kind == wordPHI {
				ix.odd = append(ix.odd, f)
			}
			return
		}
	}
	ix.words[f] |= kind
}

// maxIdentLen is NAMEDATALEN-1: PostgreSQL truncates longer identifiers.
const maxIdentLen = 63

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// fastStarts are first words of statements that change no session state:
// when a string mentions no PHI name and every statement starts with one of
// these, the planner passes it through without parsing. EXPLAIN is not one:
// EXPLAIN EXECUTE q(…) sends q's arguments, which may be PHI. Nor are
// FETCH, MOVE and CLOSE: the proxy must know which cursor they name
// (Statement.Fetch, CloseCursor).
var fastStarts = [...]string{"select", "insert", "update", "delete", "with", "values", "table",
	"show", "copy", "listen", "notify", "unlisten"}

func isFastStart(w []byte) bool {
	for _, s := range fastStarts {
		if string(w) == s {
			return true
		}
	}
	return false
}

// precheck reports whether sql mentions a name of ix anywhere (in
// identifiers, strings, comments: over-matching only costs a parse), and
// whether it needs parsing for another reason (a U& escape, which can spell
// any name, or a statement that may change session state). It does not
// allocate.
func (ix *nameIndex) precheck(sql string) (mentions, needParse bool) {
	hits, needParse := ix.scan(sql)
	return hits&wordPHI != 0, needParse
}

// scan is precheck that also reports catalog words: hits holds the kinds
// of the words found (wordPHI for anything that could spell a PHI name).
func (ix *nameIndex) scan(sql string) (hits uint8, needParse bool) {
	var buf [maxIdentLen]byte
	atStart := true // at the beginning of a statement
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case isIdentByte(c) && !(c == '$' && (i == 0 || !isIdentByte(sql[i-1]))):
			j, n := foldWord(sql, i, &buf)
			hits |= ix.words[string(buf[:n])]
			if (c == 'u' || c == 'U') && j == i+1 && j < len(sql) && sql[j] == '&' {
				// U&"..." can spell any name: plan it as if it named one.
				hits, needParse = hits|wordPHI, true
			}
			if atStart {
				atStart = false
				if !isFastStart(buf[:n]) {
					needParse = true
				}
			}
			// A string right after E (E'...') honours backslash escapes.
			if j == i+1 && (c == 'e' || c == 'E') && j < len(sql) && sql[j] == '\'' {
				i = skipQuoted(sql, j, '\'', true, &ix.words, &buf, &hits)
				continue
			}
			i = j
		case c == '\'':
			atStart = false
			i = skipQuoted(sql, i, '\'', false, &ix.words, &buf, &hits)
		case c == '"':
			atStart = false
			i = skipQuoted(sql, i, '"', false, &ix.words, &buf, &hits)
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			ix.checkWords(sql[i:i+j], &buf, &hits)
			i += j
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			j := skipBlockComment(sql, i)
			ix.checkWords(sql[i:j], &buf, &hits)
			i = j
		case c == '$':
			if end, ok := dollarQuoteEnd(sql, i); ok {
				atStart = false
				ix.checkWords(sql[i:end], &buf, &hits)
				i = end
				continue
			}
			i++
		case c == ';':
			atStart = true
			i++
		case isSpace(c) || (c == '(' && atStart):
			i++
		default:
			atStart = false
			i++
		}
	}
	if hits&wordPHI == 0 && len(ix.odd) > 0 {
		for _, o := range ix.odd {
			if containsFold(sql, o) {
				hits |= wordPHI
			}
		}
	}
	return hits, needParse
}

// checkWords checks every identifier-like run inside s (a string body or
// comment) against the index.
func (ix *nameIndex) checkWords(s string, buf *[maxIdentLen]byte, hits *uint8) {
	wordsIn(s, &ix.words, buf, hits)
}

func wordsIn(s string, words *map[string]uint8, buf *[maxIdentLen]byte, hits *uint8) {
	for i := 0; i < len(s); {
		if !isIdentByte(s[i]) {
			i++
			continue
		}
		var n int
		i, n = foldWord(s, i, buf)
		*hits |= (*words)[string(buf[:n])]
	}
}

// foldWord reads the run of identifier bytes at s[i:] into buf, folded to
// lower case (ASCII) and cut at maxIdentLen bytes: it returns where the
// run ends and how many bytes buf holds.
func foldWord(s string, i int, buf *[maxIdentLen]byte) (end, n int) {
	for i < len(s) && isIdentByte(s[i]) {
		if n < maxIdentLen {
			b := s[i]
			if b >= 'A' && b <= 'Z' {
				b += 'a' - 'A'
			}
			buf[n] = b
			n++
		}
		i++
	}
	return i, n
}

// skipQuoted returns the index after the quoted token starting at sql[i]
// (quote q, doubled to escape; backslash escapes when bs), checking the
// words inside.
func skipQuoted(sql string, i int, q byte, bs bool, words *map[string]uint8, buf *[maxIdentLen]byte, hits *uint8) int {
	j := i + 1
	for j < len(sql) {
		c := sql[j]
		if bs && c == '\\' {
			j += 2
			continue
		}
		if c == q {
			if j+1 < len(sql) && sql[j+1] == q {
				j += 2
				continue
			}
			j++
			break
		}
		j++
	}
	if j > len(sql) {
		j = len(sql)
	}
	wordsIn(sql[i:j], words, buf, hits)
	return j
}

func skipBlockComment(sql string, i int) int {
	depth := 0
	j := i
	for j < len(sql) {
		if sql[j] == '/' && j+1 < len(sql) && sql[j+1] == '*' {
			depth++
			j += 2
			continue
		}
		if sql[j] == '*' && j+1 < len(sql) && sql[j+1] == '/' {
			depth--
			j += 2
			if depth == 0 {
				return j
			}
			continue
		}
		j++
	}
	return len(sql)
}

// dollarQuoteEnd returns the end of a dollar-quoted string starting at
// sql[i] == '$', or false if sql[i] does not start one.
func dollarQuoteEnd(sql string, i int) (int, bool) {
	if i > 0 && isIdentByte(sql[i-1]) {
		return 0, false
	}
	j := i + 1
	if j < len(sql) && isIdentStart(sql[j]) {
		for j < len(sql) && isIdentByte(sql[j]) && sql[j] != '$' {
			j++
		}
	}
	if j >= len(sql) || sql[j] != '$' {
		return 0, false
	}
	tag := sql[i : j+1]
	k := strings.Index(sql[j+1:], tag)
	if k < 0 {
		return len(sql), true
	}
	return j + 1 + k + len(tag), true
}

func containsFold(s, lowerSub string) bool {
	n := len(lowerSub)
	for i := 0; i+n <= len(s); i++ {
		ok := true
		for k := 0; k < n; k++ {
			b := s[i+k]
			if b >= 'A' && b <= 'Z' {
				b += 'a' - 'A'
			}
			if b != lowerSub[k] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// skipSpace skips whitespace and comments from i.
func skipSpace(sql string, i int) int {
	for i < len(sql) {
		switch {
		case isSpace(sql[i]):
			i++
		case sql[i] == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				return len(sql)
			}
			i += j
		case sql[i] == '/' && i+1 < len(sql) && sql[i+1] == '*':
			i = skipBlockComment(sql, i)
		default:
			return i
		}
	}
	return i
}

// literalEnd returns the end offset of the constant token that starts at
// loc (a location the parser gave an A_Const): numbers with an optional
// sign, TRUE/FALSE/NULL, and every string form with SQL-standard
// continuation across newlines. It returns -1 if it cannot tell.
func literalEnd(sql string, loc int) int {
	if loc < 0 || loc >= len(sql) {
		return -1
	}
	i := loc
	// The parser folds any number of unary minus signs into a constant,
	// through parentheses too: - -7 and -(-7) are the constant 7 at the
	// first sign. The literal then ends after the closing parentheses.
	open := 0
	for sql[i] == '-' || sql[i] == '+' || sql[i] == '(' && i > loc {
		if sql[i] == '(' {
			open++
		}
		i = skipSpace(sql, i+1)
		if i >= len(sql) {
			return -1
		}
	}
	c := sql[i]
	if open > 0 && !(c >= '0' && c <= '9' || c == '.') {
		return -1
	}
	switch {
	case c >= '0' && c <= '9' || c == '.':
		j := i
		for j < len(sql) {
			b := sql[j]
			if isIdentByte(b) && b != '$' || b == '.' {
				j++
				continue
			}
			if (b == '+' || b == '-') && j > i && (sql[j-1] == 'e' || sql[j-1] == 'E') && !strings.HasPrefix(strings.ToLower(sql[i:j]), "0x") {
				j++
				continue
			}
			break
		}
		for ; open > 0; open-- {
			k := skipSpace(sql, j)
			if k >= len(sql) || sql[k] != ')' {
				return -1
			}
			j = k + 1
		}
		return j
	case c == '\'':
		return stringEnd(sql, i, false)
	case c == '$':
		if end, ok := dollarQuoteEnd(sql, i); ok {
			return end
		}
		return -1
	case isIdentStart(c):
		j := i
		for j < len(sql) && isIdentByte(sql[j]) {
			j++
		}
		w := strings.ToLower(sql[i:j])
		switch {
		case w == "true" || w == "false" || w == "null":
			return j
		case (w == "e" || w == "n" || w == "b" || w == "x") && j < len(sql) && sql[j] == '\'':
			return stringEnd(sql, j, w == "e")
		case w == "u" && strings.HasPrefix(sql[j:], "&'"):
			end := stringEnd(sql, j+1, false)
			if end < 0 {
				return -1
			}
			k := skipSpace(sql, end)
			if k+7 <= len(sql) && strings.EqualFold(sql[k:k+7], "uescape") {
				k = skipSpace(sql, k+7)
				if k < len(sql) && sql[k] == '\'' {
					return stringEnd(sql, k, false)
				}
			}
			return end
		}
	}
	return -1
}

// stringEnd returns the end of the quoted string at sql[i] == '\” and of
// any continuation segments (a quote after whitespace holding a newline).
func stringEnd(sql string, i int, bs bool) int {
	for {
		j := i + 1
		closed := false
		for j < len(sql) {
			c := sql[j]
			if bs && c == '\\' {
				j += 2
				continue
			}
			if c == '\'' {
				if j+1 < len(sql) && sql[j+1] == '\'' {
					j += 2
					continue
				}
				j++
				closed = true
				break
			}
			j++
		}
		if !closed {
			return -1
		}
		k := j
		nl := false
		for k < len(sql) && isSpace(sql[k]) {
			if sql[k] == '\n' || sql[k] == '\r' {
				nl = true
			}
			k++
		}
		if nl && k < len(sql) && sql[k] == '\'' {
			i = k
			continue
		}
		return j
	}
}

var typeWordFollowers = map[string]bool{"with": true, "without": true, "time": true, "zone": true, "varying": true, "precision": true}

// typeNameEnd returns the end of the type name starting at loc (a
// TypeName location), or -1.
func typeNameEnd(sql string, loc int) int {
	if loc < 0 || loc >= len(sql) {
		return -1
	}
	i := loc
	word := func(i int) int {
		if i < len(sql) && sql[i] == '"' {
			j := i + 1
			for j < len(sql) {
				if sql[j] == '"' {
					if j+1 < len(sql) && sql[j+1] == '"' {
						j += 2
						continue
					}
					return j + 1
				}
				j++
			}
			return -1
		}
		j := i
		for j < len(sql) && isIdentByte(sql[j]) {
			j++
		}
		if j == i {
			return -1
		}
		return j
	}
	end := word(i)
	if end < 0 {
		return -1
	}
	for end < len(sql) && sql[end] == '.' {
		if end = word(end + 1); end < 0 {
			return -1
		}
	}
	for {
		k := skipSpace(sql, end)
		e := word(k)
		if e < 0 || !typeWordFollowers[strings.ToLower(sql[k:e])] {
			break
		}
		end = e
	}
	if k := skipSpace(sql, end); k < len(sql) && sql[k] == '(' {
		if j := strings.IndexByte(sql[k:], ')'); j >= 0 {
			end = k + j + 1
		}
	}
	for {
		k := skipSpace(sql, end)
		if k < len(sql) && sql[k] == '[' {
			j := strings.IndexByte(sql[k:], ']')
			if j < 0 {
				return -1
			}
			end = k + j + 1
			continue
		}
		break
	}
	return end
}

// tokenKind is the kind of a token scanText reports.
type tokenKind uint8

const (
	tokWord    tokenKind = iota // a bare identifier or key word
	tokQuoted                   // "…"
	tokString                   // '…', E'…' with its continuation segments
	tokDollar                   // $tag$…$tag$
	tokComment                  // -- … or /* … */
)

// scanText calls visit, in order, for each token of sql[from:] that can
// hold a name — words, quoted identifiers, strings, dollar-quoted strings
// and comments — skipping everything else; it stops early when visit
// returns false. It returns false when the text does not read to its end:
// an unterminated string is reported up to the end of the text, an
// unterminated quoted identifier not at all. The lexical walks of the planner that are not the pre-check
// share it.
func scanText(sql string, from int, visit func(k tokenKind, start, end int) bool) bool {
	for i := from; i < len(sql); {
		c := sql[i]
		k, end, complete := tokWord, i+1, true
		switch {
		case c == '\'':
			bs := i > 0 && (sql[i-1] == 'e' || sql[i-1] == 'E') && (i < 2 || !isIdentByte(sql[i-2]))
			k, end = tokString, stringEnd(sql, i, bs)
			if end < 0 {
				end, complete = len(sql), false
			}
		case c == '"':
			var ok bool
			k = tokQuoted
			if end, ok = quotedEnd(sql, i, '"', false); !ok {
				return false // no name to report: the identifier has no end
			}
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			k, end = tokComment, len(sql)
			if j := strings.IndexByte(sql[i:], '\n'); j >= 0 {
				end = i + j
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			k, end = tokComment, skipBlockComment(sql, i)
		case c == '$':
			j, ok := dollarQuoteEnd(sql, i)
			if !ok {
				i++
				continue
			}
			k, end = tokDollar, j
		case isIdentStart(c):
			for end < len(sql) && isIdentByte(sql[end]) {
				end++
			}
		default:
			i++
			continue
		}
		if !visit(k, i, end) || !complete {
			return complete
		}
		i = end
	}
	return true
}

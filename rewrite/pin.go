package rewrite

import (
	"strconv"
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/phiproxy/phiproxy/pgerr"
)

// What was planned is what runs.
//
// The planner resolves relation names with its model of the session
// (search_path, role, temporary relations, catalog snapshot). If that model
// drifts from the server's, a name the proxy resolved to a plain relation
// could reach a PHI one and receive plaintext. So in every statement it
// analyzes, each relation reference whose unqualified name is the name of a
// PHI relation or of a view or function over one (Planner.pins) is sent
// schema-qualified as the plan resolved it: `"public"."patients"`,
// `"s"."patients"` for a plain relation that shadows it, `"pg_temp"."patients"`
// for a temporary one. A wrong guess then becomes a server error, never a
// silent change of meaning. The edits are byte ranges of the original text
// like every other rewrite, so comments and formatting survive.
//
// Names that create a relation (CREATE TABLE t, CREATE VIEW t, SELECT INTO
// t, CREATE SEQUENCE t) are not references and are left as written, as
// are CTE references and FOR UPDATE OF names. Where the exact extent of
// the name in the text cannot be found (a location that does not hold the
// parsed name, a U& identifier with escapes phiproxy does not decode, a
// DROP that does not read as expected), the statement is refused rather
// than guessed at. COMMENT ON and SECURITY LABEL name relations without a
// location; they move no data and change no guard, and are left as
// written.

// pinSchemaTemp is the schema a temporary relation is pinned to: the
// session's own temporary schema, whatever its pg_temp_N name.
const pinSchemaTemp = "pg_temp"

// quoteIdent quotes an identifier for SQL text.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// hasTemp reports whether the session's temporary relations (Session.Temp:
// folded names, each followed by NUL) include name.
func hasTemp(temp, name string) bool {
	for temp != "" {
		i := strings.IndexByte(temp, 0)
		if i < 0 {
			return temp == name
		}
		if temp[:i] == name {
			return true
		}
		temp = temp[i+1:]
	}
	return false
}

// isTempSchema reports whether an explicit schema names the session's
// temporary schema (pg_temp, or its pg_temp_N name).
func isTempSchema(s string) bool {
	if s == "pg_temp" {
		return true
	}
	if !strings.HasPrefix(s, "pg_temp_") || len(s) == len("pg_temp_") {
		return false
	}
	for i := len("pg_temp_"); i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// nameTokenEnd returns the end of the identifier token at sql[loc] when,
// folded as PostgreSQL folds it, it is exactly want and is not followed by
// a '.' (it is the whole, unqualified name).
func nameTokenEnd(sql string, loc int, want string) (int, bool) {
	if loc < 0 || loc >= len(sql) {
		return 0, false
	}
	var end int
	var name string
	switch c := sql[loc]; {
	case c == '"':
		e, ok := quotedEnd(sql, loc, '"', false)
		if !ok {
			return 0, false
		}
		end, name = e, strings.ReplaceAll(sql[loc+1:e-1], `""`, `"`)
	case (c == 'u' || c == 'U') && strings.HasPrefix(sql[loc+1:], `&"`):
		e, n, ok := unicodeIdent(sql, loc)
		if !ok {
			return 0, false
		}
		end, name = e, n
	case isIdentStart(c):
		end = loc
		for end < len(sql) && isIdentByte(sql[end]) {
			end++
		}
		name = foldASCII(sql[loc:end])
	default:
		return 0, false
	}
	if name != want {
		// Also a name longer than NAMEDATALEN-1 that the parser truncated.
		return 0, false
	}
	if k := skipSpace(sql, end); k < len(sql) && sql[k] == '.' {
		return 0, false
	}
	return end, true
}

// foldASCII lower-cases ASCII letters, as PostgreSQL folds an unquoted
// identifier in a multibyte encoding.
func foldASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// needsPin reports whether rv is a reference the plan must pin.
func (a *analyzer) needsPin(rv *pg.RangeVar) bool {
	return rv.Schemaname == "" && rv.Catalogname == "" && a.p.pins[rv.Relname]
}

// pin schema-qualifies the unqualified reference rv as schema.rv.Relname.
func (a *analyzer) pin(rv *pg.RangeVar, schema string) error {
	if !a.needsPin(rv) {
		return nil
	}
	loc := int(rv.Location)
	if a.pinned[loc] {
		return nil
	}
	end, ok := nameTokenEnd(a.sql, loc, rv.Relname)
	if ok && (loc < a.st.Offset || end > a.st.Offset+a.st.Length) {
		ok = false
	}
	if !ok {
		return a.unpinnable(rv.Relname, rv.Location)
	}
	a.pinEdit(loc, end, schema, rv.Relname)
	return nil
}

// pinEditNone marks the reference at loc as handled without an edit (a
// CTE reference).
func (a *analyzer) pinEditNone(loc int) {
	if a.pinned == nil {
		a.pinned = map[int]bool{}
	}
	a.pinned[loc] = true
}

func (a *analyzer) pinEdit(loc, end int, schema, name string) {
	if a.pinned == nil {
		a.pinned = map[int]bool{}
	}
	a.pinned[loc] = true
	a.st.Edits = append(a.st.Edits, Edit{Offset: loc, Length: end - loc, Text: pinText(schema, name)})
}

func pinText(schema, name string) string {
	return quoteIdent(schema) + "." + quoteIdent(name)
}

func (a *analyzer) unpinnable(name string, loc int32) error {
	e := pgerr.Newf(pgerr.FeatureNotSupported, "cannot schema-qualify the reference to relation %q", name).
		WithHint("phiproxy sends every reference to a name that a PHI relation has schema-qualified as it resolved it; write the name plainly or quoted (not with U& escapes), or qualify it with its schema")
	if loc >= 0 {
		e = e.WithPosition(position(a.sql, loc))
	}
	return e
}

func (a *analyzer) unresolved(schema, name string, loc int32) error {
	if schema != "" {
		name = schema + "." + name
	}
	e := pgerr.Newf(pgerr.UndefinedTable, "relation %q does not exist", name).
		WithHint("phiproxy could not resolve this name with the session's search_path and refuses it because a PHI relation (or a view or function over one) has this name; qualify it with its schema")
	if loc >= 0 {
		e = e.WithPosition(position(a.sql, loc))
	}
	return e
}

// pinResolved pins rv as PostgreSQL would resolve it without a CTE in
// scope, or refuses it when it resolves to nothing.
func (a *analyzer) pinResolved(rv *pg.RangeVar) error {
	rel, temp := a.resolveRelation("", rv.Relname)
	switch {
	case temp:
		return a.pin(rv, pinSchemaTemp)
	case rel != nil:
		return a.pin(rv, rel.Schema)
	}
	return a.unresolved("", rv.Relname, rv.Location)
}

// notReferences lists, by message and field name, the RangeVars that do
// not reference an existing relation: names of relations being created,
// and FOR UPDATE OF names (which name FROM items, and must stay
// unqualified).
var notReferences = map[protoreflect.FullName]protoreflect.Name{
	"pg_query.LockingClause":     "locked_rels",
	"pg_query.CreateStmt":        "relation", // also CREATE FOREIGN TABLE's
	"pg_query.IntoClause":        "rel",      // CREATE TABLE AS, SELECT INTO
	"pg_query.ViewStmt":          "view",
	"pg_query.CreateSeqStmt":     "sequence",
	"pg_query.CompositeTypeStmt": "typevar",
}

// pinRest pins the references the analysis did not reach: those in
// statements that move no row data (LOCK, GRANT, VACUUM, ALTER TABLE …
// REFERENCES, CREATE TABLE … (LIKE t), DROP, …) and any other RangeVar of
// the statement. A reference the analysis resolved is already pinned (or
// is a CTE reference); an unreached one whose name is also a CTE name in
// the statement cannot be told apart and is refused.
func (a *analyzer) pinRest(n *pg.Node) error {
	if n.GetDropStmt() == nil && n.GetCreateSchemaStmt() == nil && a.allPinned() {
		return nil
	}
	ctes := map[string]bool{}
	var rvs []*pg.RangeVar
	walkRangeVars(n.ProtoReflect(), ctes, &rvs)
	for _, rv := range rvs {
		if !a.needsPin(rv) || a.pinned[int(rv.Location)] {
			continue
		}
		if ctes[rv.Relname] {
			return a.unpinnable(rv.Relname, rv.Location)
		}
		if n.GetCreateSchemaStmt() != nil {
			// CREATE SCHEMA s CREATE …: the elements resolve names with s
			// first, which phiproxy does not model.
			return a.unpinnable(rv.Relname, rv.Location)
		}
		if err := a.pinResolved(rv); err != nil {
			return err
		}
	}
	if d := n.GetDropStmt(); d != nil {
		return a.pinDrop(d)
	}
	return nil
}

// allPinned is pinRest's fast path (the tree walk costs about a third of a
// full plan): it reports that the statement's text holds exactly as many
// identifier tokens spelling a pin name as the analysis handled references
// with one. Every reference to a pin name is such a token at its own
// location, so none is left. Any U& token, or a text the count does not
// read to its end, sends the statement to the walk.
func (a *analyzer) allPinned() bool {
	sql := a.sql[:a.st.Offset+a.st.Length]
	n, unicode := 0, false
	complete := scanText(sql, a.st.Offset, func(k tokenKind, start, end int) bool {
		switch k {
		case tokQuoted:
			if a.p.pins[strings.ReplaceAll(sql[start+1:end-1], `""`, `"`)] {
				n++
			}
		case tokWord:
			if c := sql[start]; (c == 'u' || c == 'U') && end == start+1 && end < len(sql) && sql[end] == '&' {
				unicode = true // U& escapes: only the walk reads them
				return false
			}
			w := foldASCII(sql[start:end])
			if len(w) > maxIdentLen {
				w = w[:maxIdentLen]
			}
			if a.p.pins[w] {
				n++
			}
		}
		return true
	})
	return complete && !unicode && n == len(a.pinned)
}

// walkRangeVars collects the RangeVars of a tree that reference a relation
// (see notReferences) and the names of its CTEs.
func walkRangeVars(m protoreflect.Message, ctes map[string]bool, out *[]*pg.RangeVar) {
	switch x := m.Interface().(type) {
	case *pg.CommonTableExpr:
		ctes[x.Ctename] = true
	case *pg.RangeVar:
		*out = append(*out, x)
		return
	}
	skip := notReferences[m.Descriptor().FullName()]
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() || skip != "" && fd.Name() == skip {
			return true
		}
		if fd.IsList() {
			for i := 0; i < v.List().Len(); i++ {
				walkRangeVars(v.List().Get(i).Message(), ctes, out)
			}
		} else {
			walkRangeVars(v.Message(), ctes, out)
		}
		return true
	})
}

// unicodeIdent reads the identifier U&"…" [UESCAPE '…'] at sql[i] and
// decodes its escapes (\XXXX, \+XXXXXX, \\ with the default escape
// character \).
func unicodeIdent(sql string, i int) (end int, name string, ok bool) {
	q, ok := quotedEnd(sql, i+2, '"', false)
	if !ok {
		return 0, "", false
	}
	body := strings.ReplaceAll(sql[i+3:q-1], `""`, `"`)
	end = q
	esc := byte('\\')
	if k := skipSpace(sql, q); k+7 <= len(sql) && strings.EqualFold(sql[k:k+7], "uescape") && (k+7 == len(sql) || !isIdentByte(sql[k+7])) {
		k = skipSpace(sql, k+7)
		e, ok := quotedEnd(sql, k, '\'', false)
		if !ok || k >= len(sql) || sql[k] != '\'' || e-k != 3 {
			return 0, "", false
		}
		esc = sql[k+1]
		if isHex(esc) || esc == '+' || esc == '\'' || esc == '"' || isSpace(esc) {
			return 0, "", false
		}
		end = e
	}
	var b strings.Builder
	for j := 0; j < len(body); j++ {
		if body[j] != esc {
			b.WriteByte(body[j])
			continue
		}
		if j+1 < len(body) && body[j+1] == esc {
			b.WriteByte(esc)
			j++
			continue
		}
		n := 4
		if j+1 < len(body) && body[j+1] == '+' {
			n = 6
			j++
		}
		if j+1+n > len(body) {
			return 0, "", false
		}
		v, err := strconv.ParseUint(body[j+1:j+1+n], 16, 32)
		if err != nil || v == 0 || v > utf8.MaxRune || v >= 0xD800 && v <= 0xDFFF {
			return 0, "", false // surrogate pairs are left to the server
		}
		b.WriteRune(rune(v))
		j += n
	}
	return end, b.String(), true
}

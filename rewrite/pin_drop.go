package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// dropKeywords are the words between DROP and the names for the kinds of
// DROP whose names are relations.
var dropKeywords = map[pg.ObjectType][]string{
	pg.ObjectType_OBJECT_TABLE:         {"table"},
	pg.ObjectType_OBJECT_VIEW:          {"view"},
	pg.ObjectType_OBJECT_MATVIEW:       {"materialized", "view"},
	pg.ObjectType_OBJECT_FOREIGN_TABLE: {"foreign", "table"},
}

// pinDrop pins the unqualified names of DROP TABLE/VIEW/MATERIALIZED
// VIEW/FOREIGN TABLE that a PHI relation (or a view over one) has: dropping
// by a drifted search_path would drop another relation than the one
// planned. The parse tree gives these names without a location, so the
// statement text is read token by token (DROP kind [IF EXISTS] name, …
// [CASCADE|RESTRICT]) and every name read must be the parsed one; where the
// text does not read that way, the statement is refused.
func (a *analyzer) pinDrop(d *pg.DropStmt) error {
	kw, ok := dropKeywords[d.RemoveType]
	if !ok {
		return nil
	}
	names := make([][]string, len(d.Objects))
	first := ""
	for i, o := range d.Objects {
		for _, it := range o.GetList().GetItems() {
			names[i] = append(names[i], it.GetString_().GetSval())
		}
		if len(names[i]) == 1 && a.p.pins[names[i][0]] && first == "" {
			first = names[i][0]
		}
	}
	if first == "" {
		return nil
	}
	sql, end := a.sql, a.st.Offset+a.st.Length
	if end > len(sql) {
		end = len(sql)
	}
	i := a.st.Offset
	word := func(w string) bool {
		j := skipSpace(sql, i)
		k := j
		for k < end && isIdentByte(sql[k]) {
			k++
		}
		if k > j && strings.EqualFold(sql[j:k], w) {
			i = k
			return true
		}
		return false
	}
	fail := a.unpinnable(first, -1)
	if !word("drop") {
		return fail
	}
	for _, w := range kw {
		if !word(w) {
			return fail
		}
	}
	if word("if") && !word("exists") {
		return fail
	}
	type pinAt struct {
		loc, end int
		name     string
	}
	var pins []pinAt
	for k, want := range names {
		if k > 0 {
			j := skipSpace(sql, i)
			if j >= end || sql[j] != ',' {
				return fail
			}
			i = j + 1
		}
		start := skipSpace(sql, i)
		var parts []string
		for {
			j := skipSpace(sql, i)
			e, name, ok := identToken(sql, j, end)
			if !ok {
				return fail
			}
			parts = append(parts, name)
			i = e
			if j := skipSpace(sql, i); j < end && sql[j] == '.' {
				i = j + 1
				continue
			}
			break
		}
		if strings.Join(parts, "\x00") != strings.Join(want, "\x00") {
			return fail
		}
		if len(want) == 1 && a.p.pins[want[0]] {
			pins = append(pins, pinAt{start, i, want[0]})
		}
	}
	if !word("cascade") {
		word("restrict")
	}
	if j := skipSpace(sql, i); j < end && sql[j] != ';' {
		return fail
	}
	for _, p := range pins {
		rel, temp := a.resolveRelation("", p.name)
		switch {
		case temp:
			a.pinEdit(p.loc, p.end, pinSchemaTemp, p.name)
		case rel != nil:
			a.pinEdit(p.loc, p.end, rel.Schema, p.name)
		default:
			return a.unresolved("", p.name, int32(p.loc))
		}
	}
	return nil
}

// identToken reads one identifier (plain, folded; or quoted) at sql[i],
// ending by end. A U& identifier is not read.
func identToken(sql string, i, end int) (int, string, bool) {
	if i >= end {
		return 0, "", false
	}
	switch c := sql[i]; {
	case c == '"':
		e, ok := quotedEnd(sql[:end], i, '"', false)
		if !ok {
			return 0, "", false
		}
		return e, strings.ReplaceAll(sql[i+1:e-1], `""`, `"`), true
	case isIdentStart(c):
		if (c == 'u' || c == 'U') && i+1 < end && sql[i+1] == '&' {
			return 0, "", false
		}
		j := i
		for j < end && isIdentByte(sql[j]) {
			j++
		}
		name := foldASCII(sql[i:j])
		if len(name) > maxIdentLen {
			return 0, "", false
		}
		return j, name, true
	}
	return 0, "", false
}

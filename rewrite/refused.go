package rewrite

import (
	"sort"
	"strings"
)

// Refused returns what the audit trail may know of a text the planner
// refused: a Statement with TouchesPHI, the Action its first keyword says,
// the PHI relations whose names it mentions as identifiers (all of them,
// schema-qualified), and its normalized text and fingerprint (empty when
// the text does not lex or parse). Columns are unknown. Nothing of it is a
// value. Call it for refusals only: it scans the text.
func (p *Planner) Refused(sql string) *Statement {
	st := &Statement{TouchesPHI: true, Action: actionOfText(sql), audit: &auditText{text: sql}}
	seen := map[string]bool{}
	scanText(sql, 0, func(k tokenKind, start, end int) bool {
		var w string
		switch k {
		case tokWord:
			w = foldASCII(sql[start:end])
		case tokQuoted:
			if end-start >= 2 {
				w = strings.ReplaceAll(sql[start+1:end-1], `""`, `"`)
			}
		default:
			return true
		}
		for _, c := range p.cols.list {
			if c.Table == w && !seen[c.Schema+"."+c.Table] {
				seen[c.Schema+"."+c.Table] = true
				st.Relations = append(st.Relations, c.Schema+"."+c.Table)
			}
		}
		return true
	})
	sort.Strings(st.Relations)
	return st
}

// actionOfText is the audit action of a text by its first keyword.
func actionOfText(sql string) Action {
	first, copyTo := "", false
	scanText(sql, 0, func(k tokenKind, start, end int) bool {
		if k != tokWord {
			return true
		}
		w := foldASCII(sql[start:end])
		if first == "" {
			first = w
			return first == "copy"
		}
		switch w {
		case "to":
			copyTo = true
			return false
		case "from":
			return false
		}
		return true
	})
	switch first {
	case "select", "with", "table", "values", "fetch", "declare", "explain", "execute":
		return ActionRead
	case "insert", "update", "merge":
		return ActionWrite
	case "delete", "truncate":
		return ActionDelete
	case "copy":
		if copyTo {
			return ActionCopyOut
		}
		return ActionCopyIn
	}
	return ActionNone
}

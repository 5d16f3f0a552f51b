package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// Sequelize's findOrCreate (v6, abstract/query-generator.js insertQuery
// with options.exception) wraps its INSERT in a temporary function so that
// a unique violation does not abort the transaction, and sends, as one
// simple-protocol string with the values inlined (bindParam is off on this
// path):
//
//	CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response "patients",
//	  OUT sequelize_caught_exception text) RETURNS RECORD AS $func_<hex>$
//	  BEGIN INSERT INTO "patients" (…) VALUES (…) RETURNING * INTO response;
//	  EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS
//	  sequelize_caught_exception = PG_EXCEPTION_DETAIL; END $func_<hex>$
//	  LANGUAGE plpgsql;
//	SELECT (testfunc.response).*, testfunc.sequelize_caught_exception
//	  FROM pg_temp.testfunc(); DROP FUNCTION IF EXISTS pg_temp.testfunc()
//
// (with a model, the SELECT lists (testfunc.response)."col" for each
// attribute instead of .*). sequelizeFindOrCreate recognises exactly this
// text and plans the INSERT in the body as a statement of its own;
// anything else is planned as usual, where CREATE FUNCTION naming PHI is
// refused.

const (
	seqFuncHead  = `CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response `
	seqFuncMid   = `, OUT sequelize_caught_exception text) RETURNS RECORD AS $func_`
	seqBodyHead  = ` BEGIN `
	seqBodyTail  = ` RETURNING * INTO response; EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS sequelize_caught_exception = PG_EXCEPTION_DETAIL; END `
	seqFuncTail  = ` LANGUAGE plpgsql`
	seqSelHead   = `SELECT `
	seqSelStar   = `(testfunc.response).*, `
	seqSelCol    = `(testfunc.response).`
	seqSelTail   = `testfunc.sequelize_caught_exception FROM pg_temp.testfunc()`
	seqDrop      = `DROP FUNCTION IF EXISTS pg_temp.testfunc()`
	seqHexDigits = 32
)

// findOrCreate is the plan of a recognised Sequelize findOrCreate string:
// what the CREATE FUNCTION statement (index 0) and the SELECT (index 1)
// get. The DROP (index 2) is planned as usual.
type findOrCreate struct {
	insert  *Statement // the body's INSERT, offsets in the whole string
	results []Result   // of the SELECT
	// exception is the SELECT's position of sequelize_caught_exception.
	exception int
}

// stmtText returns the i-th statement's text without surrounding spaces
// and its offset in sql.
func stmtText(sql string, raw *pg.RawStmt) (string, int) {
	off := int(raw.StmtLocation)
	n := int(raw.StmtLen)
	if n == 0 {
		n = len(sql) - off
	}
	t := sql[off : off+n]
	lead := len(t) - len(strings.TrimLeft(t, " \t\r\n"))
	return strings.TrimSpace(t), off + lead
}

// sequelizeFindOrCreate recognises the shape; nil means "not this shape"
// (plan as usual). An error is a refusal of the INSERT in the body.
func (p *Planner) sequelizeFindOrCreate(sql string, tree *pg.ParseResult, sess Session) (*findOrCreate, error) {
	if len(tree.Stmts) != 3 || tree.Stmts[0].Stmt.GetCreateFunctionStmt() == nil ||
		tree.Stmts[1].Stmt.GetSelectStmt() == nil || tree.Stmts[2].Stmt.GetDropStmt() == nil {
		return nil, nil
	}
	if d, _ := stmtText(sql, tree.Stmts[2]); d != seqDrop {
		return nil, nil
	}
	fn, fnOff := stmtText(sql, tree.Stmts[0])
	rest, ok := strings.CutPrefix(fn, seqFuncHead)
	if !ok {
		return nil, nil
	}
	i := strings.Index(rest, seqFuncMid)
	if i < 0 {
		return nil, nil
	}
	typeName := rest[:i]
	rest = rest[i+len(seqFuncMid):]
	if len(rest) < seqHexDigits+1 || rest[seqHexDigits] != '$' {
		return nil, nil
	}
	hex := rest[:seqHexDigits]
	for _, c := range hex {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return nil, nil
		}
	}
	delim := "$func_" + hex + "$"
	rest = rest[seqHexDigits+1:]
	body, ok := strings.CutSuffix(rest, delim+seqFuncTail)
	if !ok {
		return nil, nil
	}
	// The parser must agree on where the body is: it is the whole text
	// between the delimiters, which therefore does not occur inside it.
	if !seqBodyMatches(tree.Stmts[0].Stmt.GetCreateFunctionStmt(), body) {
		return nil, nil
	}
	ins, ok := cutBetween(body, seqBodyHead, seqBodyTail)
	if !ok {
		return nil, nil
	}
	insOff := fnOff + len(fn) - len(seqFuncTail) - len(delim) - len(seqBodyTail) - len(ins)
	if sql[insOff:insOff+len(ins)] != ins {
		return nil, nil
	}
	// The row type must be spelled as Sequelize quotes a table, and be the
	// INSERT's target.
	schema, rel, ok := seqQuotedTable(typeName)
	if !ok || !seqInsertOnly(ins, schema, rel) {
		return nil, nil
	}
	inner, err := p.plan(ins+" RETURNING *", sess)
	if err != nil {
		return nil, err
	}
	if len(inner.Statements) != 1 || !inner.Statements[0].TouchesPHI || len(inner.Statements[0].Relations) != 1 ||
		len(inner.Statements[0].Params) != 0 {
		return nil, nil
	}
	st := inner.Statements[0]
	target := st.Relations[0]
	dot := strings.IndexByte(target, '.')
	r := p.cat.Relation(target[:dot], target[dot+1:])
	if r == nil {
		return nil, nil
	}
	fc := &findOrCreate{insert: &Statement{
		TouchesPHI: true, Action: st.Action, Relations: st.Relations, Columns: st.Columns,
		Predicates: st.Predicates, Writes: st.Writes,
	}}
	typeOff := fnOff + len(seqFuncHead)
	// Pin the row type to the INSERT's relation, as pinning does for the
	// relation itself (pin.go).
	fc.insert.Edits = append(fc.insert.Edits, Edit{Offset: typeOff, Length: len(typeName), Text: quoteIdent(r.Schema) + "." + quoteIdent(r.Name)})
	for _, e := range st.Edits {
		e.Offset += insOff
		fc.insert.Edits = append(fc.insert.Edits, e)
	}
	for _, s := range st.Slots {
		s.Offset += insOff
		fc.insert.Slots = append(fc.insert.Slots, s)
	}
	// st.Results are RETURNING *'s PHI columns, by position in the row
	// type's attribute order.
	byName := map[string]PHIColumn{}
	for _, res := range st.Results {
		if res.Position < 0 || res.Position >= len(r.Columns) {
			return nil, nil
		}
		byName[r.Columns[res.Position].Name] = res.Column
	}
	sel, _ := stmtText(sql, tree.Stmts[1])
	list, ok := cutBetween(sel, seqSelHead, seqSelTail)
	if !ok {
		return nil, nil
	}
	if list == seqSelStar {
		fc.results, fc.exception = st.Results, len(r.Columns)
		return fc, nil
	}
	pos := 0
	for list != "" {
		list, ok = strings.CutPrefix(list, seqSelCol+`"`)
		if !ok {
			return nil, nil
		}
		j := strings.Index(list, `", `)
		if j <= 0 || strings.ContainsRune(list[:j], '"') {
			return nil, nil
		}
		name := list[:j]
		known := false
		for _, a := range r.Columns {
			known = known || a.Name == name
		}
		if !known {
			return nil, nil
		}
		if c, phi := byName[name]; phi {
			fc.results = append(fc.results, Result{Position: pos, Column: c})
		}
		pos++
		list = list[j+3:]
	}
	if pos == 0 {
		return nil, nil
	}
	fc.exception = pos
	return fc, nil
}

// seqBodyMatches: the function is pg_temp.testfunc, plpgsql, with body
// as its only AS string and nothing else set.
func seqBodyMatches(cf *pg.CreateFunctionStmt, body string) bool {
	if !cf.Replace || cf.IsProcedure || cf.SqlBody != nil || len(cf.Funcname) != 2 ||
		cf.Funcname[0].GetString_().GetSval() != "pg_temp" || cf.Funcname[1].GetString_().GetSval() != "testfunc" ||
		len(cf.Parameters) != 2 || len(cf.Options) != 2 {
		return false
	}
	var as, lang bool
	for _, o := range cf.Options {
		d := o.GetDefElem()
		if d == nil {
			return false
		}
		switch d.Defname {
		case "as":
			l := d.Arg.GetList()
			as = l != nil && len(l.Items) == 1 && l.Items[0].GetString_().GetSval() == body
		case "language":
			lang = d.Arg.GetString_().GetSval() == "plpgsql"
		}
	}
	return as && lang
}

// seqQuotedTable reads "name" or "schema"."name" as Sequelize's quoteTable
// writes them (no embedded quotes).
func seqQuotedTable(s string) (schema, name string, ok bool) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return "", "", false
	}
	for i, part := range parts {
		if len(part) < 3 || part[0] != '"' || part[len(part)-1] != '"' || strings.ContainsRune(part[1:len(part)-1], '"') {
			return "", "", false
		}
		parts[i] = part[1 : len(part)-1]
	}
	if len(parts) == 2 {
		return parts[0], parts[1], true
	}
	return "", parts[0], true
}

// seqInsertOnly: ins is exactly one INSERT INTO schema.rel (…) VALUES (…)
// with no WITH, ON CONFLICT or RETURNING of its own, and nothing in its
// values that PL/pgSQL could read as one of the function's variables or
// parameters (no column reference, no $n, no subquery).
func seqInsertOnly(ins, schema, rel string) bool {
	tree, err := pg.Parse(ins + " RETURNING *")
	if err != nil || len(tree.Stmts) != 1 {
		return false
	}
	is := tree.Stmts[0].Stmt.GetInsertStmt()
	if is == nil || is.WithClause != nil || is.OnConflictClause != nil || len(is.ReturningList) != 1 ||
		is.Relation == nil || is.Relation.Alias != nil || is.Relation.Catalogname != "" ||
		is.Relation.Schemaname != schema || is.Relation.Relname != rel || !is.Relation.Inh {
		return false
	}
	sel := is.SelectStmt.GetSelectStmt()
	if sel == nil || len(sel.ValuesLists) != 1 {
		return false
	}
	js, err := pg.ParseToJSON(ins)
	if err != nil {
		return false
	}
	for _, bad := range []string{`"ColumnRef"`, `"ParamRef"`, `"SubLink"`} {
		if strings.Contains(js, bad) {
			return false
		}
	}
	return true
}

// apply gives the CREATE FUNCTION statement the INSERT's plan.
func (fc *findOrCreate) apply(st *Statement) {
	in := fc.insert
	st.TouchesPHI, st.Action, st.Relations, st.Columns = true, in.Action, in.Relations, in.Columns
	st.Predicates, st.Writes = in.Predicates, in.Writes
	st.Slots, st.Edits = in.Slots, in.Edits
}

// applySelect gives the SELECT its Results: the function's row, read.
func (fc *findOrCreate) applySelect(st *Statement) {
	st.TouchesPHI, st.Action, st.Relations = true, ActionRead, fc.insert.Relations
	st.Columns = fc.insert.Columns
	st.Results = fc.results
	st.Redact = []int{fc.exception}
}

// cutBetween returns s without the prefix head and the suffix tail, and
// whether s has both.
func cutBetween(s, head, tail string) (string, bool) {
	mid, ok := strings.CutPrefix(s, head)
	if !ok {
		return "", false
	}
	return strings.CutSuffix(mid, tail)
}

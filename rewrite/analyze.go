package rewrite

import (
	"fmt"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/phiproxy/phiproxy/pgerr"
)

// analyzer plans one statement that mentions a PHI name.
type analyzer struct {
	p           *Planner
	sql         string
	path        []string
	user        string
	st          *Statement
	rels        map[string]bool
	cols        map[string]bool
	params      map[int]*Param
	plainParams map[int]int32
	actions     []Action
	sublinks    map[*pg.SubLink]*PHIColumn
	ddl         bool
}

func (a *analyzer) finish() {
	st := a.st
	for r := range a.rels {
		st.Relations = append(st.Relations, r)
	}
	for c := range a.cols {
		st.Columns = append(st.Columns, c)
	}
	sort.Strings(st.Relations)
	sort.Strings(st.Columns)
	for _, p := range a.params {
		st.Params = append(st.Params, *p)
	}
	sort.Slice(st.Params, func(i, j int) bool { return st.Params[i].Number < st.Params[j].Number })
	sort.Slice(st.Slots, func(i, j int) bool { return st.Slots[i].Offset < st.Slots[j].Offset })
	sort.Slice(st.Edits, func(i, j int) bool { return st.Edits[i].Offset < st.Edits[j].Offset })
	if a.ddl {
		// DDL moves no PHI value: it is checked, not audited as a read.
		st.Relations, st.Columns = nil, nil
	}
	st.TouchesPHI = len(st.Relations) > 0
	if !st.TouchesPHI {
		return
	}
	rank := map[Action]int{ActionRead: 1, ActionWrite: 2, ActionDelete: 3, ActionCopyIn: 4, ActionCopyOut: 4}
	st.Action = ActionRead
	for _, ac := range a.actions {
		if rank[ac] > rank[st.Action] {
			st.Action = ac
		}
	}
}

func (a *analyzer) statement(n *pg.Node) error {
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		out, err := a.selectStmt(x.SelectStmt, nil, nil)
		if err != nil {
			return err
		}
		if x.SelectStmt.IntoClause != nil {
			for _, c := range out {
				if c.phi != nil {
					return a.refuseCol(c.phi, -1, "SELECT INTO", "a new table would hold ciphertext outside a configured column; create the table and INSERT ... SELECT into configured PHI columns")
				}
			}
			return nil
		}
		a.actions = append(a.actions, ActionRead)
		return a.results(out)
	case *pg.Node_InsertStmt:
		return a.insert(x.InsertStmt, nil, true)
	case *pg.Node_UpdateStmt:
		return a.update(x.UpdateStmt, nil, true)
	case *pg.Node_DeleteStmt:
		return a.delete(x.DeleteStmt, nil, true)
	case *pg.Node_CopyStmt:
		return a.copy(x.CopyStmt)
	case *pg.Node_ExplainStmt:
		analyze := false
		for _, o := range x.ExplainStmt.Options {
			if d := o.GetDefElem(); d != nil && strings.EqualFold(d.Defname, "analyze") {
				analyze = d.Arg == nil || !strings.EqualFold(defText(d.Arg), "false") && defText(d.Arg) != "0" && !strings.EqualFold(defText(d.Arg), "off")
			}
		}
		if err := a.statement(x.ExplainStmt.Query); err != nil {
			return err
		}
		a.st.Results = nil
		a.st.Copy = nil
		a.st.Explain = !analyze
		return nil
	case *pg.Node_PrepareStmt:
		if err := a.statement(x.PrepareStmt.Query); err != nil {
			return err
		}
		for i, t := range x.PrepareStmt.Argtypes {
			tn := t.GetTypeName()
			p, ok := a.params[i+1]
			if tn == nil || !ok {
				continue
			}
			end := typeNameEnd(a.sql, int(tn.Location))
			if end < 0 {
				return a.refuseCol(&p.Column, tn.Location, "a declared parameter type", "leave the parameter type out of PREPARE")
			}
			text := "bytea"
			if p.Array {
				text = "bytea[]"
			}
			a.st.Edits = append(a.st.Edits, Edit{Offset: int(tn.Location), Length: end - int(tn.Location), Text: text})
		}
		return nil
	case *pg.Node_TruncateStmt:
		for _, r := range x.TruncateStmt.Relations {
			if rv := r.GetRangeVar(); rv != nil {
				if _, err := a.rangeVar(rv, &scope{}, false); err != nil {
					return err
				}
			}
		}
		a.actions = append(a.actions, ActionDelete)
		return nil
	case *pg.Node_MergeStmt:
		return a.refuseStmt("MERGE", "use INSERT ... ON CONFLICT, or separate UPDATE and INSERT statements")
	case *pg.Node_DoStmt:
		return a.refuseStmt("DO block", "DO blocks are not rewritten: run the statements directly so that phiproxy can encrypt and audit them")
	case *pg.Node_CreateFunctionStmt:
		return a.refuseStmt("CREATE FUNCTION", "function bodies are not rewritten: PHI must be read and written by statements the application sends")
	case *pg.Node_CreateTrigStmt:
		return a.refuseStmt("CREATE TRIGGER", "triggers run server-side on ciphertext; compute in the application")
	case *pg.Node_RuleStmt:
		return a.refuseStmt("CREATE RULE", "rules are not rewritten; use statements the application sends")
	case *pg.Node_CreatePolicyStmt, *pg.Node_AlterPolicyStmt:
		return a.refuseStmt("row-level security policy", "a policy expression runs server-side on ciphertext; base it on non-PHI columns")
	case *pg.Node_DeclareCursorStmt:
		_, err := a.selectStmt(x.DeclareCursorStmt.Query.GetSelectStmt(), nil, nil)
		if err != nil {
			return err
		}
		if len(a.rels) > 0 {
			return a.refuseStmt("DECLARE CURSOR", "cursors over PHI relations are not supported; use the extended protocol with a row limit (fetch size) instead")
		}
		return nil
	case *pg.Node_CreateTableAsStmt:
		a.ddl = true
		out, err := a.selectStmt(x.CreateTableAsStmt.Query.GetSelectStmt(), nil, nil)
		if err != nil {
			return err
		}
		for _, c := range out {
			if c.phi != nil {
				return a.refuseCol(c.phi, -1, "CREATE TABLE AS", "a new table would hold ciphertext outside a configured column; create the table and INSERT ... SELECT into configured PHI columns")
			}
		}
		return nil
	case *pg.Node_ViewStmt:
		a.ddl = true
		sel := x.ViewStmt.Query.GetSelectStmt()
		if sel == nil {
			return a.refuseStmt("CREATE VIEW", "")
		}
		_, err := a.selectStmt(sel, nil, nil)
		return err
	case *pg.Node_AlterTableStmt:
		a.ddl = true
		return a.alterTable(x.AlterTableStmt)
	case *pg.Node_RenameStmt:
		a.ddl = true
		r := x.RenameStmt
		if r.Relation == nil {
			return nil
		}
		src, err := a.rangeVar(r.Relation, &scope{}, false)
		if err != nil || !src.hasPHI {
			return err
		}
		if r.RenameType == pg.ObjectType_OBJECT_COLUMN {
			if c, ok := src.col(r.Subname); ok && c.phi != nil {
				return a.refuseCol(c.phi, -1, "RENAME COLUMN", "rename it in PostgreSQL and in the phi: section together, with phiproxy stopped")
			}
			return nil
		}
		return pgerr.Newf(pgerr.FeatureNotSupported, "renaming PHI relation %s is not supported through phiproxy", src.relIdent).
			WithHint("rename it in PostgreSQL and in the phi: section together, with phiproxy stopped")
	case *pg.Node_IndexStmt:
		a.ddl = true
		return a.index(x.IndexStmt)
	case *pg.Node_CallStmt:
		if x.CallStmt.Funccall != nil {
			return a.funcCall(x.CallStmt.Funccall, &scope{})
		}
		return nil
	case *pg.Node_VariableSetStmt, *pg.Node_VariableShowStmt, *pg.Node_TransactionStmt, *pg.Node_NotifyStmt,
		*pg.Node_ListenStmt, *pg.Node_UnlistenStmt, *pg.Node_ExecuteStmt, *pg.Node_DeallocateStmt,
		*pg.Node_DiscardStmt, *pg.Node_CheckPointStmt, *pg.Node_GrantStmt, *pg.Node_GrantRoleStmt,
		*pg.Node_CommentStmt, *pg.Node_DropStmt, *pg.Node_VacuumStmt, *pg.Node_LockStmt,
		*pg.Node_ClusterStmt, *pg.Node_ReindexStmt, *pg.Node_AlterOwnerStmt, *pg.Node_ClosePortalStmt,
		*pg.Node_FetchStmt, *pg.Node_CreateSchemaStmt, *pg.Node_CreateRoleStmt, *pg.Node_AlterRoleStmt,
		*pg.Node_DropRoleStmt, *pg.Node_CreateSeqStmt, *pg.Node_AlterSeqStmt, *pg.Node_CreateStmt,
		*pg.Node_SecLabelStmt, *pg.Node_AlterObjectSchemaStmt, *pg.Node_CreateStatsStmt, *pg.Node_AlterDefaultPrivilegesStmt:
		// These move no row data (DDL that creates or drops objects
		// triggers a catalog refresh through Effects).
		return nil
	case *pg.Node_RefreshMatViewStmt:
		return nil
	}
	return a.refuseStmt(a.st.Tag, "this statement type is not supported on PHI relations")
}

func (a *analyzer) refuseStmt(what, hint string) error {
	e := pgerr.Newf(pgerr.FeatureNotSupported, "%s mentioning PHI relation %s is not supported", what, a.p.mentionedRelation(a.sql[a.st.Offset:a.st.Offset+a.st.Length]))
	if hint != "" {
		e = e.WithHint(hint)
	}
	return e
}

func defText(n *pg.Node) string {
	switch v := n.Node.(type) {
	case *pg.Node_String_:
		return v.String_.Sval
	case *pg.Node_Integer:
		return fmt.Sprint(v.Integer.Ival)
	case *pg.Node_Boolean:
		return fmt.Sprint(v.Boolean.Boolval)
	case *pg.Node_Float:
		return v.Float.Fval
	case *pg.Node_AStar:
		return "*"
	case *pg.Node_List:
		var parts []string
		for _, i := range v.List.Items {
			parts = append(parts, defText(i))
		}
		return strings.Join(parts, ",")
	case *pg.Node_TypeName:
		var parts []string
		for _, i := range v.TypeName.Names {
			parts = append(parts, defText(i))
		}
		return strings.Join(parts, ".")
	}
	return constText(n)
}

// results records the PHI output columns of the top-level statement.
func (a *analyzer) results(out []colInfo) error {
	unknown := false
	for i, c := range out {
		if c.opaque {
			unknown = true
			continue
		}
		if c.phi == nil {
			continue
		}
		if unknown {
			return pgerr.Newf(pgerr.FeatureNotSupported, "cannot tell the output position of PHI column %s: a * before it expands a relation phiproxy does not know", c.phi.Ident).
				WithHint("list the columns instead of *")
		}
		a.st.Results = append(a.st.Results, Result{Position: i, Column: *c.phi})
	}
	return nil
}

// with analyzes a WITH clause into sc.ctes.
func (a *analyzer) with(w *pg.WithClause, sc *scope) error {
	if w == nil {
		return nil
	}
	sc.ctes = map[string]*cteDef{}
	for _, n := range w.Ctes {
		cte := n.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		var out []colInfo
		var err error
		switch q := cte.Ctequery.Node.(type) {
		case *pg.Node_SelectStmt:
			s := q.SelectStmt
			if w.Recursive && s.Op == pg.SetOperation_SETOP_UNION && s.Larg != nil {
				var base []colInfo
				if base, err = a.selectStmt(s.Larg, sc, nil); err != nil {
					return err
				}
				sc.ctes[cte.Ctename] = &cteDef{cols: renameCols(base, &pg.Alias{Colnames: cte.Aliascolnames})}
				var rec []colInfo
				if rec, err = a.selectStmt(s.Rarg, sc, nil); err != nil {
					return err
				}
				out, err = a.setop(base, rec, s, cte.Location)
			} else {
				out, err = a.selectStmt(s, sc, nil)
			}
		case *pg.Node_InsertStmt:
			out, err = a.insertOut(q.InsertStmt, sc)
		case *pg.Node_UpdateStmt:
			out, err = a.updateOut(q.UpdateStmt, sc)
		case *pg.Node_DeleteStmt:
			out, err = a.deleteOut(q.DeleteStmt, sc)
		default:
			return a.refuseStmt("this WITH query", "")
		}
		if err != nil {
			return err
		}
		sc.ctes[cte.Ctename] = &cteDef{cols: renameCols(out, &pg.Alias{Colnames: cte.Aliascolnames})}
	}
	return nil
}

// setop combines the outputs of the two arms of a set operation.
func (a *analyzer) setop(l, r []colInfo, s *pg.SelectStmt, loc int32) ([]colInfo, error) {
	anyPHI := func(cs []colInfo) bool {
		for _, c := range cs {
			if c.phi != nil {
				return true
			}
		}
		return false
	}
	opaque := func(cs []colInfo) bool {
		for _, c := range cs {
			if c.opaque {
				return true
			}
		}
		return false
	}
	if (opaque(l) || opaque(r)) && (anyPHI(l) || anyPHI(r)) {
		for _, c := range append(append([]colInfo(nil), l...), r...) {
			if c.phi != nil {
				return nil, a.refuseCol(c.phi, loc, "a set operation over * of an unknown relation", "list the columns of each side")
			}
		}
	}
	opName := strings.TrimPrefix(s.Op.String(), "SETOP_")
	if s.All {
		opName += " ALL"
	}
	n := len(l)
	if len(r) < n {
		n = len(r)
	}
	out := make([]colInfo, n)
	for i := 0; i < n; i++ {
		lc, rc := l[i], r[i]
		out[i] = colInfo{name: lc.name, opaque: lc.opaque || rc.opaque, written: lc.written && rc.written}
		switch {
		case lc.phi == nil && rc.phi == nil:
		case lc.phi != nil && rc.phi != nil && lc.phi.Ident == rc.phi.Ident:
			if !(s.Op == pg.SetOperation_SETOP_UNION && s.All) {
				if err := a.requireDet(lc.phi, loc, opName); err != nil {
					return nil, err
				}
			}
			out[i].phi = lc.phi
		default:
			phi, other := lc.phi, rc
			if phi == nil {
				phi, other = rc.phi, lc
			}
			what := "a non-PHI expression"
			if other.phi != nil {
				what = "PHI column " + other.phi.Ident
			}
			return nil, pgerr.Newf(pgerr.FeatureNotSupported, "%s output column %d combines PHI column %s with %s: the result's origin would be lost", opName, i+1, phi.Ident, what).
				WithHint("each output column of a set operation must come from the same PHI column in every branch").
				WithPosition(position(a.sql, loc))
		}
	}
	return out, nil
}

// selectStmt analyzes a SELECT (or VALUES, or set operation). targets, when
// not nil, are the PHI columns an INSERT writes each output position into.
func (a *analyzer) selectStmt(s *pg.SelectStmt, parent *scope, targets []*PHIColumn) ([]colInfo, error) {
	if s == nil {
		return nil, nil
	}
	sc := &scope{parent: parent}
	if err := a.with(s.WithClause, sc); err != nil {
		return nil, err
	}
	if s.Op != pg.SetOperation_SETOP_NONE && s.Op != pg.SetOperation_SET_OPERATION_UNDEFINED {
		l, err := a.selectStmt(s.Larg, sc, targets)
		if err != nil {
			return nil, err
		}
		r, err := a.selectStmt(s.Rarg, sc, targets)
		if err != nil {
			return nil, err
		}
		out, err := a.setop(l, r, s, -1)
		if err != nil {
			return nil, err
		}
		sc.outputs = out
		return out, a.tail(s, sc)
	}
	if len(s.ValuesLists) > 0 {
		var out []colInfo
		for _, row := range s.ValuesLists {
			items := row.GetList().GetItems()
			for i, v := range items {
				if i < len(targets) && targets[i] != nil {
					if err := a.value(v, targets[i], sc, true); err != nil {
						return nil, err
					}
				} else if err := a.plain(v, sc, "VALUES"); err != nil {
					return nil, err
				}
			}
			if out == nil {
				for i := range items {
					out = append(out, colInfo{name: fmt.Sprintf("column%d", i+1), written: i < len(targets) && targets[i] != nil})
				}
			}
		}
		sc.outputs = out
		return out, a.tail(s, sc)
	}
	for _, f := range s.FromClause {
		if _, err := a.fromItem(f, sc); err != nil {
			return nil, err
		}
	}
	if err := a.cond(s.WhereClause, sc, "WHERE"); err != nil {
		return nil, err
	}
	out, err := a.targetList(s.TargetList, sc, targets)
	if err != nil {
		return nil, err
	}
	sc.outputs = out
	for _, g := range s.GroupClause {
		if err := a.groupItem(g, sc, "GROUP BY"); err != nil {
			return nil, err
		}
	}
	if err := a.cond(s.HavingClause, sc, "HAVING"); err != nil {
		return nil, err
	}
	for _, w := range s.WindowClause {
		if err := a.plain(w, sc, "a window definition"); err != nil {
			return nil, err
		}
	}
	if len(s.DistinctClause) > 0 {
		if len(s.DistinctClause) == 1 && s.DistinctClause[0].Node == nil {
			for _, c := range out {
				if c.phi != nil {
					if err := a.requireDet(c.phi, -1, "SELECT DISTINCT"); err != nil {
						return nil, err
					}
				}
			}
		} else {
			for _, d := range s.DistinctClause {
				if err := a.groupItem(d, sc, "DISTINCT ON"); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, a.tail(s, sc)
}

// tail handles ORDER BY, LIMIT and OFFSET.
func (a *analyzer) tail(s *pg.SelectStmt, sc *scope) error {
	for _, n := range s.SortClause {
		sb := n.GetSortBy()
		if sb == nil {
			continue
		}
		phi, err := a.outputOrInput(sb.Node, sc, true)
		if err != nil {
			return err
		}
		if phi != nil {
			return a.refuseCol(phi, location(sb.Node), "ORDER BY", hintOrder)
		}
	}
	if err := a.plain(s.LimitCount, sc, "LIMIT"); err != nil {
		return err
	}
	return a.plain(s.LimitOffset, sc, "OFFSET")
}

// outputOrInput resolves an ORDER BY / GROUP BY item: a position, an output
// column name, or an expression over the input.
func (a *analyzer) outputOrInput(n *pg.Node, sc *scope, outputFirst bool) (*PHIColumn, error) {
	if c := n.GetAConst(); c != nil && c.GetIval() != nil {
		// The plan depends on the literal's value: no literal-shape caching.
		a.st.literalDependent = true
		k := int(c.GetIval().Ival)
		if k >= 1 && k <= len(sc.outputs) {
			return sc.outputs[k-1].phi, nil
		}
		return nil, nil
	}
	if cr := n.GetColumnRef(); cr != nil && len(cr.Fields) == 1 && cr.Fields[0].GetString_() != nil {
		name := cr.Fields[0].GetString_().Sval
		var out *colInfo
		for i := range sc.outputs {
			if sc.outputs[i].name == name {
				out = &sc.outputs[i]
				break
			}
		}
		if out != nil && outputFirst {
			return out.phi, nil
		}
		phi, err := a.expr(n, sc)
		if err != nil || phi != nil || out == nil {
			return phi, err
		}
		return out.phi, nil
	}
	return a.expr(n, sc)
}

func (a *analyzer) groupItem(n *pg.Node, sc *scope, what string) error {
	if gs := n.GetGroupingSet(); gs != nil {
		for _, c := range gs.Content {
			if err := a.groupItem(c, sc, what); err != nil {
				return err
			}
		}
		return nil
	}
	if l := n.GetList(); l != nil {
		for _, c := range l.Items {
			if err := a.groupItem(c, sc, what); err != nil {
				return err
			}
		}
		return nil
	}
	phi, err := a.outputOrInput(n, sc, false)
	if err != nil || phi == nil {
		return err
	}
	return a.requireDet(phi, location(n), what)
}

func (a *analyzer) targetList(list []*pg.Node, sc *scope, targets []*PHIColumn) ([]colInfo, error) {
	var out []colInfo
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			continue
		}
		if cr := rt.Val.GetColumnRef(); cr != nil && len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil {
			cols, err := a.expandStar(cr, sc)
			if err != nil {
				return nil, err
			}
			out = append(out, cols...)
			continue
		}
		pos := len(out)
		name := rt.Name
		if name == "" {
			name = defaultName(rt.Val)
		}
		if pos < len(targets) && targets[pos] != nil {
			if err := a.value(rt.Val, targets[pos], sc, true); err != nil {
				return nil, err
			}
			out = append(out, colInfo{name: name, written: true})
			continue
		}
		phi, err := a.expr(rt.Val, sc)
		if err != nil {
			return nil, err
		}
		out = append(out, colInfo{name: name, phi: phi})
	}
	return out, nil
}

func defaultName(n *pg.Node) string {
	switch x := n.Node.(type) {
	case *pg.Node_ColumnRef:
		f := x.ColumnRef.Fields
		if len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case *pg.Node_FuncCall:
		f := x.FuncCall.Funcname
		if len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case *pg.Node_TypeCast:
		return defaultName(x.TypeCast.Arg)
	}
	return "?column?"
}

func (a *analyzer) expandStar(cr *pg.ColumnRef, sc *scope) ([]colInfo, error) {
	if len(cr.Fields) == 1 {
		var out []colInfo
		for _, it := range sc.items {
			out = append(out, expandItem(it)...)
		}
		for _, c := range out {
			a.use(c.phi)
		}
		return out, nil
	}
	q := cr.Fields[len(cr.Fields)-2].GetString_().GetSval()
	for s := sc; s != nil; s = s.parent {
		for _, src := range s.sources {
			if src.alias == q {
				for _, c := range src.cols {
					a.use(c.phi)
				}
				return src.cols, nil
			}
		}
	}
	return []colInfo{{opaque: true}}, nil
}

// fromItem adds a FROM item's sources to sc.
func (a *analyzer) fromItem(n *pg.Node, sc *scope) (item, error) {
	it, err := a.fromItemInner(n, sc)
	if err != nil {
		return nil, err
	}
	sc.items = append(sc.items, it)
	return it, nil
}

func (a *analyzer) fromItemInner(n *pg.Node, sc *scope) (item, error) {
	switch x := n.Node.(type) {
	case *pg.Node_RangeVar:
		src, err := a.rangeVar(x.RangeVar, sc, true)
		if err != nil {
			return nil, err
		}
		sc.sources = append(sc.sources, src)
		return src, nil
	case *pg.Node_RangeSubselect:
		out, err := a.selectStmt(x.RangeSubselect.Subquery.GetSelectStmt(), sc, nil)
		if err != nil {
			return nil, err
		}
		src := &source{alias: x.RangeSubselect.Alias.GetAliasname(), aliasedByAlias: true, cols: renameCols(out, x.RangeSubselect.Alias)}
		for _, c := range out {
			src.hasPHI = src.hasPHI || c.phi != nil
			src.opaque = src.opaque || c.opaque
			if c.phi != nil {
				src.relIdent = c.phi.Ident[:strings.LastIndexByte(c.phi.Ident, '.')]
			}
		}
		sc.sources = append(sc.sources, src)
		return src, nil
	case *pg.Node_JoinExpr:
		j := x.JoinExpr
		before := len(sc.sources)
		left, err := a.fromItemInner(j.Larg, sc)
		if err != nil {
			return nil, err
		}
		right, err := a.fromItemInner(j.Rarg, sc)
		if err != nil {
			return nil, err
		}
		ji := &joinItem{left: left, right: right}
		for _, u := range j.UsingClause {
			ji.using = append(ji.using, u.GetString_().GetSval())
		}
		if j.IsNatural {
			for _, lc := range expandItem(left) {
				if _, ok, _ := findInItem(right, lc.name); ok && !lc.opaque {
					ji.using = append(ji.using, lc.name)
				}
			}
		}
		for _, u := range ji.using {
			lc, _, _ := findInItem(left, u)
			rc, _, _ := findInItem(right, u)
			if lc.phi == nil && rc.phi == nil {
				continue
			}
			if lc.phi == nil || rc.phi == nil {
				phi := lc.phi
				if phi == nil {
					phi = rc.phi
				}
				return nil, a.refuseCol(phi, -1, "JOIN USING with a non-PHI column", hintKeys)
			}
			a.use(lc.phi)
			a.use(rc.phi)
			if err := a.requireDet(lc.phi, -1, "JOIN USING"); err != nil {
				return nil, err
			}
			if !sameKey(lc.phi, rc.phi) {
				return nil, a.refuseKeys(lc.phi, rc.phi, -1, "JOIN USING")
			}
		}
		if err := a.cond(j.Quals, sc, "JOIN ON"); err != nil {
			return nil, err
		}
		if j.Alias != nil {
			cols := renameCols(expandItem(ji), j.Alias)
			src := &source{alias: j.Alias.Aliasname, aliasedByAlias: true, cols: cols}
			for _, c := range cols {
				src.hasPHI = src.hasPHI || c.phi != nil
				src.opaque = src.opaque || c.opaque
			}
			sc.sources = append(sc.sources[:before], src)
			return src, nil
		}
		return ji, nil
	case *pg.Node_RangeFunction:
		rf := x.RangeFunction
		alias := ""
		for _, f := range rf.Functions {
			for _, part := range f.GetList().GetItems() {
				if fc := part.GetFuncCall(); fc != nil {
					if alias == "" && len(fc.Funcname) > 0 {
						alias = fc.Funcname[len(fc.Funcname)-1].GetString_().GetSval()
					}
					if err := a.funcCall(fc, sc); err != nil {
						return nil, err
					}
				} else if err := a.plain(part, sc, "a function in FROM"); err != nil {
					return nil, err
				}
			}
		}
		if rf.Alias != nil {
			alias = rf.Alias.Aliasname
		}
		src := &source{alias: alias, aliasedByAlias: true, opaque: true, cols: renameCols([]colInfo{{opaque: true}}, rf.Alias)}
		sc.sources = append(sc.sources, src)
		return src, nil
	case *pg.Node_RangeTableSample:
		it, err := a.fromItemInner(x.RangeTableSample.Relation, sc)
		if err != nil {
			return nil, err
		}
		for _, arg := range x.RangeTableSample.Args {
			if err := a.plain(arg, sc, "TABLESAMPLE"); err != nil {
				return nil, err
			}
		}
		return it, nil
	}
	if err := a.generic(n, sc, "a FROM item"); err != nil {
		return nil, err
	}
	src := &source{opaque: true, cols: []colInfo{{opaque: true}}}
	sc.sources = append(sc.sources, src)
	return src, nil
}

// cond analyzes a boolean condition.
func (a *analyzer) cond(n *pg.Node, sc *scope, what string) error {
	if n == nil {
		return nil
	}
	phi, err := a.expr(n, sc)
	if err != nil {
		return err
	}
	if phi != nil {
		return a.refuseCol(phi, location(n), "use as a condition in "+what, hintFor(phi))
	}
	return nil
}

// plain analyzes an expression whose value must not be a PHI column.
func (a *analyzer) plain(n *pg.Node, sc *scope, what string) error {
	if n == nil {
		return nil
	}
	phi, err := a.expr(n, sc)
	if err != nil {
		return err
	}
	if phi != nil {
		return a.refuseCol(phi, location(n), what, hintFor(phi))
	}
	return nil
}

// expr analyzes an expression and returns the PHI column it denotes when it
// is a bare reference to one (possibly through a scalar subquery).
func (a *analyzer) expr(n *pg.Node, sc *scope) (*PHIColumn, error) {
	if n == nil {
		return nil, nil
	}
	switch x := n.Node.(type) {
	case *pg.Node_ColumnRef:
		return a.lookupColumn(x.ColumnRef, sc)
	case *pg.Node_AConst, *pg.Node_SetToDefault, *pg.Node_SqlvalueFunction, *pg.Node_String_, *pg.Node_Integer:
		return nil, nil
	case *pg.Node_ParamRef:
		return nil, a.plainParam(x.ParamRef)
	case *pg.Node_TypeCast:
		return nil, a.plain(x.TypeCast.Arg, sc, "a cast to "+defText(&pg.Node{Node: &pg.Node_TypeName{TypeName: x.TypeCast.TypeName}}))
	case *pg.Node_AExpr:
		return nil, a.aexpr(x.AExpr, sc)
	case *pg.Node_BoolExpr:
		for _, arg := range x.BoolExpr.Args {
			if err := a.cond(arg, sc, strings.TrimSuffix(x.BoolExpr.Boolop.String(), "_EXPR")); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case *pg.Node_NullTest:
		if _, err := a.expr(x.NullTest.Arg, sc); err != nil {
			return nil, err
		}
		return nil, nil
	case *pg.Node_FuncCall:
		return nil, a.funcCall(x.FuncCall, sc)
	case *pg.Node_SubLink:
		return a.subLink(x.SubLink, sc)
	case *pg.Node_SelectStmt:
		_, err := a.selectStmt(x.SelectStmt, sc, nil)
		return nil, err
	case *pg.Node_List:
		for _, i := range x.List.Items {
			if err := a.plain(i, sc, "a list"); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case *pg.Node_ResTarget:
		return nil, a.plain(x.ResTarget.Val, sc, "an expression")
	case *pg.Node_SortBy:
		phi, err := a.expr(x.SortBy.Node, sc)
		if err != nil {
			return nil, err
		}
		if phi != nil {
			return nil, a.refuseCol(phi, location(x.SortBy.Node), "ORDER BY", hintOrder)
		}
		return nil, nil
	}
	return nil, a.generic(n, sc, describe(n))
}

// generic walks every child expression of a node type with no special
// meaning for PHI: a PHI column anywhere below is refused.
func (a *analyzer) generic(n *pg.Node, sc *scope, what string) error {
	var walk func(m protoreflect.Message) error
	walk = func(m protoreflect.Message) error {
		var err error
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Kind() != protoreflect.MessageKind {
				return true
			}
			visit := func(child protoreflect.Message) bool {
				if node, ok := child.Interface().(*pg.Node); ok {
					err = a.plain(node, sc, what)
				} else {
					err = walk(child)
				}
				return err == nil
			}
			if fd.IsList() {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					if !visit(l.Get(i).Message()) {
						return false
					}
				}
				return true
			}
			if fd.IsMap() {
				return true
			}
			return visit(v.Message())
		})
		return err
	}
	m := n.ProtoReflect()
	f := m.WhichOneof(m.Descriptor().Oneofs().Get(0))
	if f == nil {
		return nil
	}
	return walk(m.Get(f).Message())
}

// location returns a node's location, or -1.
func location(n *pg.Node) int32 {
	if n == nil {
		return -1
	}
	m := n.ProtoReflect()
	f := m.WhichOneof(m.Descriptor().Oneofs().Get(0))
	if f == nil {
		return -1
	}
	inner := m.Get(f).Message()
	lf := inner.Descriptor().Fields().ByName("location")
	if lf == nil {
		return -1
	}
	return int32(inner.Get(lf).Int())
}

func opName(names []*pg.Node) string {
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1].GetString_().GetSval()
}

func (a *analyzer) aexpr(x *pg.A_Expr, sc *scope) error {
	op := opName(x.Name)
	switch x.Kind {
	case pg.A_Expr_Kind_AEXPR_OP:
		if (op == "=" || op == "<>" || op == "!=") && x.Lexpr != nil {
			return a.compare(x.Lexpr, x.Rexpr, op, sc, x.Location)
		}
		what := "operator " + op
		if err := a.plain(x.Lexpr, sc, what); err != nil {
			return err
		}
		return a.plain(x.Rexpr, sc, what)
	case pg.A_Expr_Kind_AEXPR_OP_ANY, pg.A_Expr_Kind_AEXPR_OP_ALL:
		quant := "ANY"
		if x.Kind == pg.A_Expr_Kind_AEXPR_OP_ALL {
			quant = "ALL"
		}
		what := fmt.Sprintf("%s %s(...)", op, quant)
		lphi, err := a.operand(x.Lexpr, sc)
		if err != nil {
			return err
		}
		if lphi == nil {
			if err := a.plain(x.Lexpr, sc, what); err != nil {
				return err
			}
			rphi, err := a.operand(x.Rexpr, sc)
			if err != nil {
				return err
			}
			if rphi != nil {
				return a.refuseCol(rphi, x.Location, what, hintFor(rphi))
			}
			return a.plain(x.Rexpr, sc, what)
		}
		if !(quant == "ANY" && op == "=") && !(quant == "ALL" && (op == "<>" || op == "!=")) {
			return a.refuseCol(lphi, x.Location, what, hintFor(lphi))
		}
		if err := a.requireDet(lphi, x.Location, what); err != nil {
			return err
		}
		return a.arrayValue(x.Rexpr, lphi, sc, x.Location)
	case pg.A_Expr_Kind_AEXPR_IN:
		what := "IN"
		if op == "<>" {
			what = "NOT IN"
		}
		lphi, err := a.operand(x.Lexpr, sc)
		if err != nil {
			return err
		}
		items := x.Rexpr.GetList().GetItems()
		if lphi == nil {
			if err := a.plain(x.Lexpr, sc, what); err != nil {
				return err
			}
			for _, it := range items {
				if phi, err := a.operand(it, sc); err != nil {
					return err
				} else if phi != nil {
					return a.refuseCol(phi, location(it), what+" with a non-PHI expression", hintValue)
				}
				if err := a.plain(it, sc, what); err != nil {
					return err
				}
			}
			return nil
		}
		if err := a.requireDet(lphi, x.Location, what); err != nil {
			return err
		}
		for _, it := range items {
			if err := a.value(it, lphi, sc, false); err != nil {
				return err
			}
		}
		return nil
	}
	what := map[pg.A_Expr_Kind]string{
		pg.A_Expr_Kind_AEXPR_DISTINCT: "IS DISTINCT FROM", pg.A_Expr_Kind_AEXPR_NOT_DISTINCT: "IS NOT DISTINCT FROM",
		pg.A_Expr_Kind_AEXPR_NULLIF: "NULLIF", pg.A_Expr_Kind_AEXPR_LIKE: "LIKE", pg.A_Expr_Kind_AEXPR_ILIKE: "ILIKE",
		pg.A_Expr_Kind_AEXPR_SIMILAR: "SIMILAR TO", pg.A_Expr_Kind_AEXPR_BETWEEN: "BETWEEN",
		pg.A_Expr_Kind_AEXPR_NOT_BETWEEN: "NOT BETWEEN", pg.A_Expr_Kind_AEXPR_BETWEEN_SYM: "BETWEEN SYMMETRIC",
		pg.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM: "NOT BETWEEN SYMMETRIC",
	}[x.Kind]
	if what == "" {
		what = "operator " + op
	}
	if err := a.plain(x.Lexpr, sc, what); err != nil {
		return err
	}
	return a.plain(x.Rexpr, sc, what)
}

// operand returns the PHI column n denotes if n is a column reference or a
// scalar subquery; other nodes are not evaluated (nil).
func (a *analyzer) operand(n *pg.Node, sc *scope) (*PHIColumn, error) {
	if n == nil {
		return nil, nil
	}
	switch x := n.Node.(type) {
	case *pg.Node_ColumnRef:
		return a.lookupColumn(x.ColumnRef, sc)
	case *pg.Node_SubLink:
		if x.SubLink.SubLinkType == pg.SubLinkType_EXPR_SUBLINK {
			return a.peekSubLink(x.SubLink, sc)
		}
	}
	return nil, nil
}

// peekSubLink analyzes a scalar subquery once and remembers the PHI column
// it returns, so that a second visit (operand, then expr) records no slot
// twice.
func (a *analyzer) peekSubLink(sl *pg.SubLink, sc *scope) (*PHIColumn, error) {
	if phi, ok := a.sublinks[sl]; ok {
		return phi, nil
	}
	out, err := a.selectStmt(sl.Subselect.GetSelectStmt(), sc, nil)
	if err != nil {
		return nil, err
	}
	var phi *PHIColumn
	if len(out) == 1 {
		phi = out[0].phi
	}
	a.sublinks[sl] = phi
	return phi, nil
}

func (a *analyzer) compare(l, r *pg.Node, op string, sc *scope, loc int32) error {
	lphi, err := a.operand(l, sc)
	if err != nil {
		return err
	}
	rphi, err := a.operand(r, sc)
	if err != nil {
		return err
	}
	what := "operator " + op
	switch {
	case lphi == nil && rphi == nil:
		if err := a.plain(l, sc, what); err != nil {
			return err
		}
		return a.plain(r, sc, what)
	case lphi != nil && rphi != nil:
		if err := a.requireDet(lphi, loc, what); err != nil {
			return err
		}
		if err := a.requireDet(rphi, loc, what); err != nil {
			return err
		}
		if !sameKey(lphi, rphi) {
			return a.refuseKeys(lphi, rphi, loc, "comparison")
		}
		return nil
	}
	phi, other := lphi, r
	if phi == nil {
		phi, other = rphi, l
	}
	if err := a.requireDet(phi, loc, what); err != nil {
		return err
	}
	return a.value(other, phi, sc, false)
}

// value analyzes n as a value compared with (write=false) or written into
// (write=true) the PHI column target.
func (a *analyzer) value(n *pg.Node, target *PHIColumn, sc *scope, write bool) error {
	a.use(target)
	switch x := n.Node.(type) {
	case *pg.Node_AConst:
		c := x.AConst
		if c.Isnull {
			return nil
		}
		if c.GetBsval() != nil {
			return a.refuseCol(target, c.Location, "a bit-string literal", hintValue)
		}
		end := literalEnd(a.sql, int(c.Location))
		if end < 0 {
			return pgerr.Newf(pgerr.Internal, "BUG: cannot find the end of a literal for PHI column %s", target.Ident)
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: int(c.Location), Length: end - int(c.Location), Text: constText(n), Column: *target})
		return nil
	case *pg.Node_ParamRef:
		return a.phiParam(x.ParamRef, target, false)
	case *pg.Node_TypeCast:
		return a.castValue(x.TypeCast, target)
	case *pg.Node_SetToDefault:
		if write {
			return nil
		}
	case *pg.Node_ColumnRef, *pg.Node_SubLink:
		phi, err := a.operand(n, sc)
		if err != nil {
			return err
		}
		if phi == nil {
			if !write {
				return a.refuseCol(target, location(n), "comparison with a non-PHI column", hintValue)
			}
			return a.refuseCol(target, location(n), "writing a non-PHI column or expression into it", hintWrite)
		}
		if !write {
			if err := a.requireDet(phi, location(n), "comparison"); err != nil {
				return err
			}
		}
		if !sameKey(target, phi) {
			if write {
				return a.refuseKeys(phi, target, location(n), "copying")
			}
			return a.refuseKeys(target, phi, location(n), "comparison")
		}
		return nil
	}
	if write {
		if err := a.plain(n, sc, "an expression written into a PHI column"); err != nil {
			return err
		}
		return a.refuseCol(target, location(n), "writing an expression ("+describeShort(n)+")", hintWrite)
	}
	if err := a.plain(n, sc, "an expression compared with a PHI column"); err != nil {
		return err
	}
	return a.refuseCol(target, location(n), "comparison with an expression ("+describeShort(n)+")", hintValue)
}

func describeShort(n *pg.Node) string {
	switch x := n.Node.(type) {
	case *pg.Node_FuncCall:
		return opName(x.FuncCall.Funcname) + "()"
	case *pg.Node_AExpr:
		return "operator " + opName(x.AExpr.Name)
	}
	return strings.TrimPrefix(describe(n), "expression ")
}

// castTypes maps type names as written in casts to logical types.
var castTypes = map[string]string{
	"text": "text", "varchar": "varchar", "character varying": "varchar", "date": "date",
	"timestamp": "timestamp", "timestamptz": "timestamptz", "int4": "int4", "integer": "int4", "int": "int4",
	"int8": "int8", "bigint": "int8", "numeric": "numeric", "decimal": "numeric", "bool": "bool",
	"boolean": "bool", "uuid": "uuid", "jsonb": "jsonb",
}

func castTarget(tn *pg.TypeName) string {
	if tn == nil || len(tn.ArrayBounds) > 0 {
		return ""
	}
	name := opName(tn.Names)
	if t, ok := castTypes[name]; ok {
		return t
	}
	return name
}

func (a *analyzer) castValue(tc *pg.TypeCast, target *PHIColumn) error {
	t := castTarget(tc.TypeName)
	inner := tc.Arg
	switch x := inner.Node.(type) {
	case *pg.Node_AConst:
		if x.AConst.Isnull {
			return nil
		}
		if t == "bytea" {
			// Already ciphertext (a statement phiproxy rewrote, or a value
			// read back as bytea): sent as is; the CHECK constraint of the
			// column still requires the envelope header.
			return nil
		}
		if !compatibleCast(t, target.Type) {
			return a.refuseCol(target, tc.Location, "a cast to "+t, "cast the literal to "+target.Type+", or write it without a cast")
		}
		start, end := a.castExtent(tc)
		if start < 0 {
			return a.refuseCol(target, tc.Location, "this form of cast", "write the literal without a cast")
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: start, Length: end - start, Text: constText(inner), Column: *target})
		return nil
	case *pg.Node_ParamRef:
		if t == "bytea" {
			return a.plainParam(x.ParamRef)
		}
		if !compatibleCast(t, target.Type) {
			return a.refuseCol(target, tc.Location, "a cast to "+t, "cast the parameter to "+target.Type+", or leave the cast out")
		}
		tl := int(tc.TypeName.Location)
		end := typeNameEnd(a.sql, tl)
		if end < 0 || tl < int(x.ParamRef.Location) {
			return a.refuseCol(target, tc.Location, "this form of cast", "leave the cast out")
		}
		a.st.Edits = append(a.st.Edits, Edit{Offset: tl, Length: end - tl, Text: "bytea"})
		return a.phiParam(x.ParamRef, target, false)
	}
	return a.refuseCol(target, tc.Location, "comparison with a cast expression", hintValue)
}

func compatibleCast(cast, logical string) bool {
	if cast == logical {
		return true
	}
	switch logical {
	case "text", "varchar":
		return cast == "text" || cast == "varchar"
	}
	return false
}

// castExtent returns the byte range of a cast around a literal: 'x'::T,
// CAST('x' AS T) or T 'x'.
func (a *analyzer) castExtent(tc *pg.TypeCast) (int, int) {
	cl := int(location(tc.Arg))
	tl := int(tc.TypeName.Location)
	if cl < 0 || tl < 0 {
		return -1, -1
	}
	if tl < cl {
		end := literalEnd(a.sql, cl)
		if end < 0 {
			return -1, -1
		}
		return tl, end
	}
	end := typeNameEnd(a.sql, tl)
	if end < 0 {
		return -1, -1
	}
	loc := int(tc.Location)
	if loc >= 0 && loc < cl && len(a.sql) >= loc+4 && strings.EqualFold(a.sql[loc:loc+4], "cast") {
		k := skipSpace(a.sql, end)
		if k >= len(a.sql) || a.sql[k] != ')' {
			return -1, -1
		}
		return loc, k + 1
	}
	return cl, end
}

// arrayValue handles the right side of col = ANY(...).
func (a *analyzer) arrayValue(n *pg.Node, target *PHIColumn, sc *scope, loc int32) error {
	a.use(target)
	switch x := n.Node.(type) {
	case *pg.Node_ParamRef:
		return a.phiParam(x.ParamRef, target, true)
	case *pg.Node_AArrayExpr:
		return a.arrayElements(x.AArrayExpr, target, sc)
	case *pg.Node_AConst:
		c := x.AConst
		if c.Isnull {
			return nil
		}
		if c.GetSval() == nil {
			return a.refuseCol(target, c.Location, "= ANY with a literal that is not an array", hintArray)
		}
		end := literalEnd(a.sql, int(c.Location))
		if end < 0 {
			return pgerr.Newf(pgerr.Internal, "BUG: cannot find the end of a literal for PHI column %s", target.Ident)
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: int(c.Location), Length: end - int(c.Location), Text: constText(n), Array: true, Column: *target})
		return nil
	case *pg.Node_TypeCast:
		if tn := x.TypeCast.TypeName; tn != nil && len(tn.ArrayBounds) > 0 {
			return a.arrayCast(x.TypeCast, target, sc)
		}
	}
	if err := a.plain(n, sc, "= ANY(...)"); err != nil {
		return err
	}
	return a.refuseCol(target, loc, "= ANY with an array expression", hintArray)
}

const hintArray = "use IN (...), = ANY('{...}'), = ANY(ARRAY[...]) with literals, or = ANY($n) with an array parameter"

func (a *analyzer) arrayElements(ae *pg.A_ArrayExpr, target *PHIColumn, sc *scope) error {
	for _, e := range ae.Elements {
		if err := a.value(e, target, sc, false); err != nil {
			return err
		}
	}
	return nil
}

// arrayCast handles col = ANY(x::T[]). A cast to bytea[] is taken as
// ciphertext already (what the proxy renders for an array literal:
// ARRAY[E'\\x…'::bytea, …]::bytea[]), so planning rendered text again adds
// no slot. For the column's own logical type, an array literal becomes one
// array slot covering the whole cast; ARRAY[...] and $n keep their
// elements' handling and the cast becomes a cast to bytea[].
func (a *analyzer) arrayCast(tc *pg.TypeCast, target *PHIColumn, sc *scope) error {
	elem := opName(tc.TypeName.Names)
	if t, ok := castTypes[elem]; ok {
		elem = t
	}
	tl := int(tc.TypeName.Location)
	end := typeNameEnd(a.sql, tl)
	if end < 0 || a.sql[end-1] != ']' {
		return a.refuseCol(target, tc.Location, "this form of array cast", "write the array type as "+target.Type+"[]")
	}
	if elem == "bytea" {
		switch x := tc.Arg.Node.(type) {
		case *pg.Node_AConst:
			return nil
		case *pg.Node_ParamRef:
			return a.plainParam(x.ParamRef)
		case *pg.Node_AArrayExpr:
			return a.arrayElements(x.AArrayExpr, target, sc)
		}
		return a.refuseCol(target, tc.Location, "= ANY with a cast expression", hintArray)
	}
	if !compatibleCast(elem, target.Type) {
		return a.refuseCol(target, tc.Location, "a cast to "+elem+"[]", "cast the array to "+target.Type+"[], or write it without a cast")
	}
	toBytea := Edit{Offset: tl, Length: end - tl, Text: "bytea[]"}
	switch x := tc.Arg.Node.(type) {
	case *pg.Node_AConst:
		if x.AConst.Isnull {
			a.st.Edits = append(a.st.Edits, toBytea)
			return nil
		}
		if x.AConst.GetSval() == nil {
			return a.refuseCol(target, x.AConst.Location, "= ANY with a literal that is not an array", hintArray)
		}
		start, cend := a.castExtent(tc)
		if start < 0 || start > int(x.AConst.Location) {
			return a.refuseCol(target, tc.Location, "this form of array cast", "write the array literal without a cast")
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: start, Length: cend - start, Text: constText(tc.Arg), Array: true, Column: *target})
		return nil
	case *pg.Node_AArrayExpr:
		if tl < int(x.AArrayExpr.Location) {
			return a.refuseCol(target, tc.Location, "this form of array cast", "write ARRAY[...] without a cast")
		}
		if err := a.arrayElements(x.AArrayExpr, target, sc); err != nil {
			return err
		}
		a.st.Edits = append(a.st.Edits, toBytea)
		return nil
	case *pg.Node_ParamRef:
		if tl < int(x.ParamRef.Location) {
			return a.refuseCol(target, tc.Location, "this form of array cast", "leave the cast out")
		}
		a.st.Edits = append(a.st.Edits, toBytea)
		return a.phiParam(x.ParamRef, target, true)
	}
	if err := a.plain(tc.Arg, sc, "= ANY(...)"); err != nil {
		return err
	}
	return a.refuseCol(target, tc.Location, "= ANY with an array expression", hintArray)
}

func (a *analyzer) phiParam(pr *pg.ParamRef, target *PHIColumn, array bool) error {
	n := int(pr.Number)
	if _, ok := a.plainParams[n]; ok {
		return a.paramConflict(n, target, pr.Location)
	}
	if p, ok := a.params[n]; ok {
		if !sameKey(&p.Column, target) || p.Array != array {
			return pgerr.Newf(pgerr.FeatureNotSupported, "parameter $%d is bound for PHI columns %s and %s, which do not share a key and type", n, p.Column.Ident, target.Ident).
				WithHint("use a separate parameter for each column").WithPosition(position(a.sql, pr.Location))
		}
		return nil
	}
	a.params[n] = &Param{Number: n, Array: array, Column: *target}
	return nil
}

func (a *analyzer) plainParam(pr *pg.ParamRef) error {
	n := int(pr.Number)
	if p, ok := a.params[n]; ok {
		return a.paramConflict(n, &p.Column, pr.Location)
	}
	a.plainParams[n] = pr.Location
	return nil
}

func (a *analyzer) paramConflict(n int, phi *PHIColumn, loc int32) error {
	return pgerr.Newf(pgerr.FeatureNotSupported, "parameter $%d is bound for PHI column %s and also used as plaintext", n, phi.Ident).
		WithHint("use a separate parameter for each use").WithPosition(position(a.sql, loc))
}

func (a *analyzer) funcCall(fc *pg.FuncCall, sc *scope) error {
	name := opName(fc.Funcname)
	if d, ok := a.p.funcs[name]; ok {
		reads := "PHI"
		if len(d.Reads) > 0 {
			reads = strings.Join(d.Reads, ", ")
		}
		return pgerr.Newf(pgerr.FeatureNotSupported, "function %s.%s reads PHI columns (%s) server-side", d.Schema, d.Name, reads).
			WithHint("query the PHI columns directly so that phiproxy can decrypt and audit them").WithPosition(position(a.sql, fc.Location))
	}
	if sqlRunners[name] && len(a.p.cols.byRel) > 0 {
		return pgerr.Newf(pgerr.FeatureNotSupported, "function %s runs SQL given as text, which phiproxy cannot check for PHI", name).
			WithHint("run the query directly").WithPosition(position(a.sql, fc.Location))
	}
	if name == "set_config" {
		a.st.literalDependent = true
	}
	if name == "set_config" && len(fc.Args) > 0 && strings.EqualFold(constText(fc.Args[0]), "search_path") {
		a.st.Effects |= EffectSearchPath
	}
	what := name + "()"
	if name == "count" && len(fc.Args) == 1 && fc.Over == nil {
		phi, err := a.operand(fc.Args[0], sc)
		if err != nil {
			return err
		}
		if phi != nil && fc.AggDistinct {
			if err := a.requireDet(phi, fc.Location, "count(DISTINCT ...)"); err != nil {
				return err
			}
		}
		if phi == nil {
			if err := a.plain(fc.Args[0], sc, what); err != nil {
				return err
			}
		}
	} else {
		for _, arg := range fc.Args {
			if err := a.plain(arg, sc, "function "+what); err != nil {
				return err
			}
		}
	}
	for _, o := range fc.AggOrder {
		if err := a.plain(o, sc, "ORDER BY in "+what); err != nil {
			return err
		}
	}
	if err := a.cond(fc.AggFilter, sc, "FILTER"); err != nil {
		return err
	}
	if fc.Over != nil {
		return a.plain(&pg.Node{Node: &pg.Node_WindowDef{WindowDef: fc.Over}}, sc, "a window (OVER)")
	}
	return nil
}

func (a *analyzer) subLink(sl *pg.SubLink, sc *scope) (*PHIColumn, error) {
	switch sl.SubLinkType {
	case pg.SubLinkType_EXISTS_SUBLINK:
		_, err := a.selectStmt(sl.Subselect.GetSelectStmt(), sc, nil)
		return nil, err
	case pg.SubLinkType_EXPR_SUBLINK:
		return a.peekSubLink(sl, sc)
	case pg.SubLinkType_ANY_SUBLINK, pg.SubLinkType_ALL_SUBLINK:
		op := opName(sl.OperName)
		if op == "" {
			op = "="
		}
		lphi, err := a.operand(sl.Testexpr, sc)
		if err != nil {
			return nil, err
		}
		if lphi == nil {
			if err := a.plain(sl.Testexpr, sc, "IN (subquery)"); err != nil {
				return nil, err
			}
		}
		out, err := a.selectStmt(sl.Subselect.GetSelectStmt(), sc, nil)
		if err != nil {
			return nil, err
		}
		var rphi *PHIColumn
		if len(out) > 0 {
			rphi = out[0].phi
		}
		switch {
		case lphi == nil && rphi == nil:
			return nil, nil
		case lphi == nil:
			return nil, a.refuseCol(rphi, sl.Location, "comparison of its subquery output with a non-PHI expression", hintValue)
		case rphi == nil:
			return nil, a.refuseCol(lphi, sl.Location, "comparison with a subquery returning a non-PHI column", hintValue)
		}
		allowed := sl.SubLinkType == pg.SubLinkType_ANY_SUBLINK && op == "=" || sl.SubLinkType == pg.SubLinkType_ALL_SUBLINK && (op == "<>" || op == "!=")
		if !allowed {
			return nil, a.refuseCol(lphi, sl.Location, "operator "+op+" with a subquery", hintFor(lphi))
		}
		if err := a.requireDet(lphi, sl.Location, "IN (subquery)"); err != nil {
			return nil, err
		}
		if err := a.requireDet(rphi, sl.Location, "IN (subquery)"); err != nil {
			return nil, err
		}
		if !sameKey(lphi, rphi) {
			return nil, a.refuseKeys(lphi, rphi, sl.Location, "IN (subquery)")
		}
		return nil, nil
	}
	if err := a.plain(sl.Testexpr, sc, "a subquery comparison"); err != nil {
		return nil, err
	}
	out, err := a.selectStmt(sl.Subselect.GetSelectStmt(), sc, nil)
	if err != nil {
		return nil, err
	}
	for _, c := range out {
		if c.phi != nil {
			return nil, a.refuseCol(c.phi, sl.Location, "a subquery of this kind ("+strings.TrimSuffix(sl.SubLinkType.String(), "_SUBLINK")+")", hintFor(c.phi))
		}
	}
	return nil, nil
}

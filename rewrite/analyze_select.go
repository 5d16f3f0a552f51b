package rewrite

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"

	"github.com/phiproxy/phiproxy/pgerr"
)

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
				sc.ctes[cte.Ctename] = &cteDef{cols: noOrigin(renameCols(base, &pg.Alias{Colnames: cte.Aliascolnames}))}
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
		sc.ctes[cte.Ctename] = &cteDef{cols: noOrigin(renameCols(out, &pg.Alias{Colnames: cte.Aliascolnames}))}
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
	if err := a.groupBy(s.GroupClause, sc, "GROUP BY"); err != nil {
		return nil, err
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
			if err := a.distinct(out); err != nil {
				return nil, err
			}
		} else if err := a.groupBy(s.DistinctClause, sc, "DISTINCT ON"); err != nil {
			return nil, err
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

// groupItem analyzes one GROUP BY or DISTINCT ON item; keyed says it is a
// column of a relation reference whose key is grouped too (groupBy).
func (a *analyzer) groupItem(n *pg.Node, sc *scope, what string, keyed bool) error {
	if gs := n.GetGroupingSet(); gs != nil {
		for _, c := range gs.Content {
			if err := a.groupItem(c, sc, what, false); err != nil {
				return err
			}
		}
		return nil
	}
	if l := n.GetList(); l != nil {
		for _, c := range l.Items {
			if err := a.groupItem(c, sc, what, false); err != nil {
				return err
			}
		}
		return nil
	}
	// DISTINCT ON reads a bare name as an output column first, as ORDER
	// BY does; GROUP BY as an input column.
	phi, err := a.outputOrInput(n, sc, what == "DISTINCT ON")
	if err != nil || phi == nil || keyed {
		return err
	}
	if phi.Mode == Randomized {
		return a.refuseCol(phi, location(n), what, hintGroupRandomized)
	}
	return a.requireDet(phi, location(n), what) // a predicate for policy
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
		ci := colInfo{name: name, phi: phi}
		if o := a.origin(rt.Val, sc); o != nil && o.phi == phi {
			ci.src, ci.at = o.src, o.at
		}
		out = append(out, ci)
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
		src := &source{alias: x.RangeSubselect.Alias.GetAliasname(), aliasedByAlias: true, cols: noOrigin(renameCols(out, x.RangeSubselect.Alias))}
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

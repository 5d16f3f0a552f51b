package rewrite

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/phiproxy/phiproxy/pgerr"
)

// cond analyzes a boolean condition.
func (a *analyzer) cond(n *pg.Node, sc *scope, what string) error {
	return a.plain(n, sc, "use as a condition in "+what)
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
		if nt, ok := nullTestParam(x.NullTest.Arg); ok {
			// Plain or PHI: known once the whole statement is analyzed.
			a.nullTests = append(a.nullTests, nt)
			return nil, nil
		}
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

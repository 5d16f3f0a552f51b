package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"

	"github.com/phiproxy/phiproxy/pgerr"
)

// insert plans INSERT. top says it is the statement itself (its RETURNING
// list becomes Results) rather than a WITH query.
func (a *analyzer) insert(ins *pg.InsertStmt, parent *scope, top bool) error {
	out, err := a.insertOut(ins, parent)
	return a.topResults(out, err, top)
}

func (a *analyzer) insertOut(ins *pg.InsertStmt, parent *scope) ([]colInfo, error) {
	a.actions = append(a.actions, ActionWrite)
	sc := &scope{parent: parent}
	if err := a.with(ins.WithClause, sc); err != nil {
		return nil, err
	}
	target, err := a.rangeVar(ins.Relation, sc, false)
	if err != nil {
		return nil, err
	}
	var cols []colInfo
	if len(ins.Cols) > 0 {
		for _, n := range ins.Cols {
			rt := n.GetResTarget()
			c, ok := target.col(rt.Name)
			if !ok {
				c = colInfo{name: rt.Name}
			}
			if c.phi != nil && len(rt.Indirection) > 0 {
				return nil, a.refuseCol(c.phi, rt.Location, "assigning to a subscript or field", hintWrite)
			}
			cols = append(cols, c)
		}
	} else {
		cols = target.cols
	}
	targets := make([]*PHIColumn, 0, len(cols))
	unknownFrom := -1
	for i, c := range cols {
		if c.opaque && unknownFrom < 0 {
			unknownFrom = i
		}
		targets = append(targets, c.phi)
		a.use(c.phi)
	}
	if sel := ins.SelectStmt.GetSelectStmt(); sel != nil {
		out, err := a.selectStmt(sel, sc, targets)
		if err != nil {
			return nil, err
		}
		for i, c := range out {
			if c.opaque {
				for _, t := range targets[i:] {
					if t != nil {
						return nil, a.refuseCol(t, -1, "INSERT ... SELECT * from a relation phiproxy does not know", "list the columns")
					}
				}
				break
			}
			var t *PHIColumn
			if i < len(targets) {
				t = targets[i]
			}
			if t != nil {
				a.wrote(t)
			}
			switch {
			case c.written:
			case t != nil && c.phi == nil:
				return nil, a.refuseCol(t, -1, "writing a non-PHI column or expression into it", hintWrite)
			case t != nil && !sameKey(t, c.phi):
				return nil, a.refuseKeys(c.phi, t, -1, "copying")
			case t == nil && c.phi != nil:
				name := "column " + c.name
				if i < len(cols) && cols[i].name != "" {
					name = "non-PHI column " + target.schema + "." + target.rel + "." + cols[i].name
				}
				return nil, a.refuseCol(c.phi, -1, "copying it into "+name, "copy PHI only into PHI columns sharing its key")
			}
		}
	}
	if oc := ins.OnConflictClause; oc != nil {
		tsc := &scope{parent: sc, sources: []*source{target}, items: []item{target}}
		if oc.Infer != nil {
			for _, e := range oc.Infer.IndexElems {
				ie := e.GetIndexElem()
				if ie == nil {
					continue
				}
				if ie.Name != "" {
					if c, ok := target.col(ie.Name); ok && c.phi != nil {
						a.use(c.phi)
						if err := a.requireDet(c.phi, oc.Location, "ON CONFLICT"); err != nil {
							return nil, err
						}
					}
				} else if err := a.plain(ie.Expr, tsc, "an ON CONFLICT index expression"); err != nil {
					return nil, err
				}
			}
			if err := a.cond(oc.Infer.WhereClause, tsc, "ON CONFLICT WHERE"); err != nil {
				return nil, err
			}
		}
		excluded := &source{alias: "excluded", aliasedByAlias: true, cols: target.cols, hasPHI: target.hasPHI, relIdent: target.relIdent}
		usc := &scope{parent: sc, sources: []*source{target, excluded}, items: []item{target}}
		if err := a.setList(oc.TargetList, target, usc); err != nil {
			return nil, err
		}
		if err := a.cond(oc.WhereClause, usc, "ON CONFLICT DO UPDATE WHERE"); err != nil {
			return nil, err
		}
	}
	rsc := &scope{parent: sc, sources: []*source{target}, items: []item{target}}
	return a.targetList(ins.ReturningList, rsc, nil)
}

// setList plans UPDATE's SET (and ON CONFLICT DO UPDATE SET).
func (a *analyzer) setList(list []*pg.Node, target *source, sc *scope) error {
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			continue
		}
		c, _ := target.col(rt.Name)
		val := rt.Val
		if mar := val.GetMultiAssignRef(); mar != nil {
			row := mar.Source.GetRowExpr()
			if row == nil {
				// (a, b) = (SELECT ...): analyze the subquery once.
				if mar.Colno == 1 {
					phi, err := a.operand(mar.Source, sc)
					if err != nil {
						return err
					}
					if phi == nil {
						if err := a.plain(mar.Source, sc, "a multiple-column assignment"); err != nil {
							return err
						}
					}
				}
				if c.phi != nil {
					return a.refuseCol(c.phi, rt.Location, "assignment from a multiple-column subquery", hintWrite)
				}
				continue
			}
			if int(mar.Colno) > len(row.Args) {
				continue
			}
			val = row.Args[mar.Colno-1]
		}
		if c.phi == nil {
			if err := a.plain(val, sc, "assignment to non-PHI column "+target.schema+"."+target.rel+"."+rt.Name); err != nil {
				return err
			}
			continue
		}
		if len(rt.Indirection) > 0 {
			return a.refuseCol(c.phi, rt.Location, "assigning to a subscript or field", hintWrite)
		}
		if err := a.value(val, c.phi, sc, true); err != nil {
			return err
		}
	}
	return nil
}

func (a *analyzer) update(up *pg.UpdateStmt, parent *scope, top bool) error {
	out, err := a.updateOut(up, parent)
	return a.topResults(out, err, top)
}

func (a *analyzer) updateOut(up *pg.UpdateStmt, parent *scope) ([]colInfo, error) {
	a.actions = append(a.actions, ActionWrite)
	sc, target, err := a.dmlScope(up.WithClause, up.Relation, up.FromClause, parent)
	if err != nil {
		return nil, err
	}
	if err := a.setList(up.TargetList, target, sc); err != nil {
		return nil, err
	}
	if err := a.cond(up.WhereClause, sc, "WHERE"); err != nil {
		return nil, err
	}
	return a.targetList(up.ReturningList, sc, nil)
}

func (a *analyzer) delete(del *pg.DeleteStmt, parent *scope, top bool) error {
	out, err := a.deleteOut(del, parent)
	return a.topResults(out, err, top)
}

func (a *analyzer) deleteOut(del *pg.DeleteStmt, parent *scope) ([]colInfo, error) {
	a.actions = append(a.actions, ActionDelete)
	sc, _, err := a.dmlScope(del.WithClause, del.Relation, del.UsingClause, parent)
	if err != nil {
		return nil, err
	}
	if err := a.cond(del.WhereClause, sc, "WHERE"); err != nil {
		return nil, err
	}
	return a.targetList(del.ReturningList, sc, nil)
}

// topResults checks out as the results a statement returns to the
// client when it is the top statement (not one inside another).
func (a *analyzer) topResults(out []colInfo, err error, top bool) error {
	if err != nil || !top {
		return err
	}
	return a.results(out)
}

// dmlScope is the scope of an UPDATE or DELETE: its WITH queries, its
// target relation and the relations of its FROM (or USING) list.
func (a *analyzer) dmlScope(with *pg.WithClause, rel *pg.RangeVar, from []*pg.Node, parent *scope) (*scope, *source, error) {
	sc := &scope{parent: parent}
	if err := a.with(with, sc); err != nil {
		return nil, nil, err
	}
	target, err := a.rangeVar(rel, sc, false)
	if err != nil {
		return nil, nil, err
	}
	sc.sources = append(sc.sources, target)
	sc.items = append(sc.items, target)
	for _, f := range from {
		if _, err := a.fromItem(f, sc); err != nil {
			return nil, nil, err
		}
	}
	return sc, target, nil
}

// CopyOptions reads the direction, the format (text unless given) and
// the other options of a COPY statement as Copy holds them: names in
// lower case, values as text.
func CopyOptions(cp *pg.CopyStmt) *Copy {
	c := &Copy{In: cp.IsFrom, Format: "text", Options: map[string]string{}}
	for _, o := range cp.Options {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		v := ""
		if d.Arg != nil {
			v = defText(d.Arg)
		}
		if strings.EqualFold(d.Defname, "format") {
			c.Format = strings.ToLower(v)
			continue
		}
		c.Options[strings.ToLower(d.Defname)] = v
	}
	return c
}

func (a *analyzer) copy(cp *pg.CopyStmt) error {
	c := CopyOptions(cp)
	var out []colInfo
	if cp.Relation != nil {
		sc := &scope{}
		src, err := a.rangeVar(cp.Relation, sc, false)
		if err != nil {
			return err
		}
		sc.sources, sc.items = []*source{src}, []item{src}
		if len(cp.Attlist) > 0 {
			for _, n := range cp.Attlist {
				name := n.GetString_().GetSval()
				ci, ok := src.col(name)
				if !ok {
					ci = colInfo{name: name}
				}
				out = append(out, ci)
			}
		} else {
			out = src.cols
		}
		if err := a.cond(cp.WhereClause, sc, "COPY ... WHERE"); err != nil {
			return err
		}
	} else {
		var err error
		if out, err = a.selectOrDML(cp.Query); err != nil {
			return err
		}
	}
	if len(a.rels) == 0 {
		return nil
	}
	if cp.Filename != "" || cp.IsProgram {
		what := "COPY to or from a server-side file"
		if cp.IsProgram {
			what = "COPY to or from a server-side program"
		}
		return pgerr.Newf(pgerr.FeatureNotSupported, "%s is not supported on PHI relation %s", what, firstKey(a.rels)).
			WithHint("use COPY ... FROM STDIN / TO STDOUT (psql's \\copy) so that phiproxy can encrypt and decrypt the rows")
	}
	if c.In {
		a.actions = append(a.actions, ActionCopyIn)
	} else {
		a.actions = append(a.actions, ActionCopyOut)
	}
	for i, ci := range out {
		if ci.opaque {
			for _, rest := range out[i:] {
				if rest.phi != nil {
					return a.refuseCol(rest.phi, -1, "COPY over * of a relation phiproxy does not know", "list the columns")
				}
			}
			break
		}
		f := CopyField{Name: ci.name}
		if ci.phi != nil {
			p := *ci.phi
			f.Column = &p
			a.use(ci.phi)
		}
		c.Fields = append(c.Fields, f)
	}
	if err := a.results(out); err != nil {
		return err
	}
	if c.In {
		a.st.Results = nil
	}
	a.st.Copy = c
	return nil
}

func (a *analyzer) selectOrDML(n *pg.Node) ([]colInfo, error) {
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		return a.selectStmt(x.SelectStmt, nil, nil)
	case *pg.Node_InsertStmt:
		return a.insertOut(x.InsertStmt, nil)
	case *pg.Node_UpdateStmt:
		return a.updateOut(x.UpdateStmt, nil)
	case *pg.Node_DeleteStmt:
		return a.deleteOut(x.DeleteStmt, nil)
	}
	return nil, a.refuseStmt(a.st.Tag, "")
}

func firstKey(m map[string]bool) string {
	best := ""
	for k := range m {
		if best == "" || k < best {
			best = k
		}
	}
	return best
}

func (a *analyzer) alterTable(at *pg.AlterTableStmt) error {
	src, err := a.rangeVar(at.Relation, &scope{}, false)
	if err != nil {
		return err
	}
	for _, n := range at.Cmds {
		cmd := n.GetAlterTableCmd()
		if cmd == nil {
			continue
		}
		switch cmd.Subtype {
		case pg.AlterTableType_AT_DropConstraint:
			if err := a.envelopeGuard(cmd.Name, "dropping constraint"); err != nil {
				return err
			}
		case pg.AlterTableType_AT_AlterConstraint:
			if err := a.envelopeGuard(cmd.Def.GetConstraint().GetConname(), "altering constraint"); err != nil {
				return err
			}
		}
	}
	if !src.hasPHI {
		return nil
	}
	for _, n := range at.Cmds {
		cmd := n.GetAlterTableCmd()
		if cmd == nil || cmd.Name == "" {
			continue
		}
		if c, ok := src.col(cmd.Name); ok && c.phi != nil {
			what := "ALTER TABLE " + nodeTypeTag(strings.TrimPrefix(cmd.Subtype.String(), "AT_"))
			return pgerr.Newf(pgerr.FeatureNotSupported, "%s on PHI column %s is not supported through phiproxy", what, c.phi.Ident).
				WithHint("a PHI column holds ciphertext (bytea); change it with phiproxy stopped and the phi: section updated, or use phiproxy reencrypt")
		}
	}
	return nil
}

func (a *analyzer) index(ix *pg.IndexStmt) error {
	src, err := a.rangeVar(ix.Relation, &scope{}, false)
	if err != nil || !src.hasPHI {
		return err
	}
	sc := &scope{sources: []*source{src}, items: []item{src}}
	for _, n := range append(append([]*pg.Node(nil), ix.IndexParams...), ix.IndexIncludingParams...) {
		ie := n.GetIndexElem()
		if ie == nil {
			continue
		}
		if ie.Name != "" {
			if c, ok := src.col(ie.Name); ok && c.phi != nil {
				a.use(c.phi)
				if ix.AccessMethod != "" && ix.AccessMethod != "btree" && ix.AccessMethod != "hash" {
					return a.refuseCol(c.phi, -1, "a "+ix.AccessMethod+" index", "index a deterministic PHI column with btree or hash")
				}
				if err := a.requireDet(c.phi, -1, "an index"); err != nil {
					return err
				}
			}
			continue
		}
		if err := a.plain(ie.Expr, sc, "an index expression"); err != nil {
			return err
		}
	}
	return a.cond(ix.WhereClause, sc, "a partial index predicate")
}

// envelopePrefix starts the name of every constraint phiproxy installs
// (crypto.EnvelopeCheckName): the envelope CHECK that makes PostgreSQL
// itself refuse plaintext in a PHI column.
const envelopePrefix = "phiproxy_"

// envelopeGuard refuses to drop, alter or rename a phiproxy_* constraint:
// with it gone, plaintext written around the proxy would be accepted. An
// ORM's schema sync sends exactly this when it finds a constraint its
// models do not declare.
func (a *analyzer) envelopeGuard(name, what string) error {
	if !strings.HasPrefix(name, envelopePrefix) {
		return nil
	}
	return pgerr.Newf(pgerr.InsufficientPrivilege, "%s %s is not allowed through phiproxy: phiproxy_* constraints make PostgreSQL refuse plaintext in PHI columns", what, name).
		WithHint("phiproxy installs the phiproxy_* constraints; leave them out of schema migrations. To take a column out of the PHI map, run phiproxy decrypt, then change the constraint as a DBA directly against PostgreSQL; phiproxy check reports a missing constraint")
}

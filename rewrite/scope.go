package rewrite

import (
	"fmt"

	pg "github.com/pganalyze/pg_query_go/v5"
	"github.com/phiproxy/phiproxy/pgerr"
)

// colInfo is one output column of a relation, subquery or select list.
type colInfo struct {
	name string
	phi  *PHIColumn
	// opaque marks an unknown number of columns (a * over a relation the
	// catalog does not know).
	opaque bool
	// written: an INSERT ... SELECT position already checked against its
	// PHI target.
	written bool
	// src and at are the column's origin: column at of the relation
	// reference src in this query level's FROM clause (nil when the value
	// is not a plain column of a table, or it came through a subquery or
	// a CTE). See analyze_keys.go.
	src *source
	at  int
}

// source is one named range in a FROM clause.
type source struct {
	alias          string // the name it is referred to by
	schema, rel    string // for schema-qualified references when not aliased
	cols           []colInfo
	opaque         bool // may have columns we do not know
	hasPHI         bool
	relIdent       string // "schema.table" when a PHI relation
	aliasedByAlias bool
	// keys are the relation's keys (Relation.Keys) as indices into cols.
	keys [][]int
}

func (s *source) col(name string) (colInfo, bool) {
	for _, c := range s.cols {
		if !c.opaque && c.name == name {
			return c, true
		}
	}
	return colInfo{}, false
}

// item is a FROM item, kept in order for * expansion: *source or *joinItem.
type item interface{}

type joinItem struct {
	left, right item
	using       []string
}

type cteDef struct {
	cols []colInfo
}

// scope is one query level.
type scope struct {
	parent  *scope
	sources []*source
	items   []item
	ctes    map[string]*cteDef
	outputs []colInfo
}

func (sc *scope) cte(name string) *cteDef {
	for s := sc; s != nil; s = s.parent {
		if d, ok := s.ctes[name]; ok {
			return d
		}
	}
	return nil
}

func expandItem(it item) []colInfo {
	switch x := it.(type) {
	case *source:
		return x.cols
	case *joinItem:
		l, r := expandItem(x.left), expandItem(x.right)
		if len(x.using) == 0 {
			return append(append([]colInfo(nil), l...), r...)
		}
		in := map[string]bool{}
		var out []colInfo
		for _, u := range x.using {
			in[u] = true
			for _, c := range l {
				if c.name == u && !c.opaque {
					out = append(out, c)
					break
				}
			}
		}
		for _, c := range l {
			if c.opaque || !in[c.name] {
				out = append(out, c)
			}
		}
		for _, c := range r {
			if c.opaque || !in[c.name] {
				out = append(out, c)
			}
		}
		return out
	}
	panic("BUG: unknown FROM item")
}

func findInItem(it item, name string) (colInfo, bool, bool) {
	for _, c := range expandItem(it) {
		if c.opaque {
			continue
		}
		if c.name == name {
			return c, true, false
		}
	}
	opaque := false
	for _, c := range expandItem(it) {
		if c.opaque {
			opaque = true
		}
	}
	return colInfo{}, false, opaque
}

// lookupColumn resolves a ColumnRef's name parts. It returns the PHI
// column it denotes, or nil for anything else.
func (a *analyzer) lookupColumn(cr *pg.ColumnRef, sc *scope) (*PHIColumn, error) {
	var names []string
	star := false
	for _, f := range cr.Fields {
		switch v := f.Node.(type) {
		case *pg.Node_String_:
			names = append(names, v.String_.Sval)
		case *pg.Node_AStar:
			star = true
		}
	}
	if star {
		// A * in an expression is a whole-row reference.
		for s := sc; s != nil; s = s.parent {
			for _, src := range s.sources {
				if (len(names) == 0 || src.alias == names[len(names)-1]) && src.hasPHI {
					return nil, a.wholeRow(src, cr.Location)
				}
			}
			if len(names) == 0 {
				break
			}
		}
		return nil, nil
	}
	switch len(names) {
	case 1:
		name := names[0]
		for s := sc; s != nil; s = s.parent {
			var found []colInfo
			opaque := false
			for _, src := range s.sources {
				if c, ok := src.col(name); ok {
					found = append(found, c)
				} else if src.opaque {
					opaque = true
				}
			}
			if len(found) > 0 {
				return a.pick(found, name, cr.Location)
			}
			for _, src := range s.sources {
				if src.alias == name {
					if src.hasPHI {
						return nil, a.wholeRow(src, cr.Location)
					}
					return nil, nil
				}
			}
			if opaque {
				return nil, nil
			}
		}
		return nil, nil
	case 0:
		return nil, nil
	}
	// Qualified: [schema.]table.column (a leading catalog name is ignored).
	col := names[len(names)-1]
	q := names[len(names)-2]
	schema := ""
	if len(names) >= 3 {
		schema = names[len(names)-3]
	}
	for s := sc; s != nil; s = s.parent {
		for _, src := range s.sources {
			if src.alias != q || (schema != "" && (src.aliasedByAlias || src.schema != schema)) {
				continue
			}
			c, ok := src.col(col)
			if !ok {
				return nil, nil
			}
			return a.use(c.phi), nil
		}
	}
	if len(names) == 2 {
		// q.col may be a field of a composite column q.
		phi, err := a.lookupColumn(&pg.ColumnRef{Fields: cr.Fields[:1], Location: cr.Location}, sc)
		if err != nil {
			return nil, err
		}
		if phi != nil {
			return nil, a.refuseCol(phi, cr.Location, "field selection", hintFor(phi))
		}
	}
	return nil, nil
}

func (a *analyzer) pick(found []colInfo, name string, loc int32) (*PHIColumn, error) {
	var phi *PHIColumn
	plain := false
	for _, c := range found {
		if c.phi == nil {
			plain = true
			continue
		}
		if phi != nil && phi.Key != c.phi.Key {
			plain = true
		}
		if phi == nil {
			phi = c.phi
		}
	}
	if phi != nil && plain && len(found) > 1 {
		return nil, pgerr.Newf(pgerr.AmbiguousColumn, "column reference %q is ambiguous", name).WithPosition(position(a.sql, loc))
	}
	return a.use(phi), nil
}

func (a *analyzer) use(phi *PHIColumn) *PHIColumn {
	if phi != nil {
		a.cols[phi.Ident] = true
		a.phiRefs++
	}
	return phi
}

func (a *analyzer) wholeRow(src *source, loc int32) error {
	return pgerr.Newf(pgerr.FeatureNotSupported, "whole-row reference to %s cannot be used: it holds PHI columns", src.relIdent).
		WithHint("name the columns you need instead of the row").WithPosition(position(a.sql, loc))
}

// resolveRelation finds a relation as PostgreSQL would with the session's
// search_path. temp reports a relation of the session's temporary schema
// (Session.Temp; the catalog holds none): pg_temp is searched first unless
// the search_path names it, then at its place, and pg_temp.name (or
// pg_temp_N.name) finds only temporary relations.
func (a *analyzer) resolveRelation(schema, name string) (rel *Relation, temp bool) {
	if schema != "" {
		if isTempSchema(schema) {
			return nil, hasTemp(a.temp, name)
		}
		return a.p.cat.Relation(schema, name), false
	}
	sawCatalog, sawTemp := false, false
	for _, s := range a.path {
		switch s {
		case "pg_catalog":
			sawCatalog = true
		case "pg_temp":
			sawTemp = true
		}
	}
	if !sawTemp && hasTemp(a.temp, name) {
		return nil, true
	}
	if !sawCatalog {
		if r := a.p.cat.Relation("pg_catalog", name); r != nil {
			return r, false
		}
	}
	for _, s := range a.path {
		switch s {
		case "$user":
			s = a.user
		case "pg_temp":
			if hasTemp(a.temp, name) {
				return nil, true
			}
			continue
		}
		if r := a.p.cat.Relation(s, name); r != nil {
			return r, false
		}
	}
	return nil, false
}

// rangeVar turns a relation reference into a source.
func (a *analyzer) rangeVar(rv *pg.RangeVar, sc *scope, allowCTE bool) (*source, error) {
	alias := rv.Relname
	aliased := false
	if rv.Alias != nil && rv.Alias.Aliasname != "" {
		alias, aliased = rv.Alias.Aliasname, true
	}
	if allowCTE && rv.Schemaname == "" {
		if d := sc.cte(rv.Relname); d != nil {
			src := &source{alias: alias, rel: rv.Relname, aliasedByAlias: true, cols: d.cols}
			for _, c := range d.cols {
				if c.phi != nil {
					src.hasPHI = true
				}
				if c.opaque {
					src.opaque = true
				}
			}
			src.cols = renameCols(src.cols, rv.Alias)
			// A CTE reference is not a relation: nothing to pin.
			if a.needsPin(rv) {
				a.pinEditNone(int(rv.Location))
			}
			return src, nil
		}
	}
	rel, temp := a.resolveRelation(rv.Schemaname, rv.Relname)
	if rel == nil {
		if !temp && (a.p.cols.relNames[rv.Relname] || a.needsPin(rv)) {
			return nil, a.unresolved(rv.Schemaname, rv.Relname, rv.Location)
		}
		if temp {
			// A temporary relation: not PHI (phiproxy encrypts only
			// configured relations), columns unknown.
			if err := a.pin(rv, pinSchemaTemp); err != nil {
				return nil, err
			}
		}
		return &source{alias: alias, schema: rv.Schemaname, rel: rv.Relname, opaque: true, aliasedByAlias: aliased,
			cols: renameCols([]colInfo{{opaque: true}}, rv.Alias)}, nil
	}
	if err := a.pin(rv, rel.Schema); err != nil {
		return nil, err
	}
	src := &source{alias: alias, schema: rel.Schema, rel: rel.Name, aliasedByAlias: aliased}
	configured := a.p.cols.hasRelation(rel.Schema, rel.Name)
	if len(rel.PHIDeps) > 0 && !configured {
		return nil, pgerr.Newf(pgerr.FeatureNotSupported, "view %s.%s reads PHI columns (%s) but none of its columns is configured as PHI", rel.Schema, rel.Name, rel.PHIDeps[0]).
			WithHint("declare the view's PHI columns under phi: (with key: of the base column), or query the base table").
			WithPosition(position(a.sql, rv.Location))
	}
	for _, at := range rel.Columns {
		c := colInfo{name: at.Name}
		if pc := a.p.cols.lookup(rel.Schema, rel.Name, at.Name); pc != nil {
			c.phi = &PHIColumn{Ident: pc.Ident(), RelOID: rel.OID, Attnum: at.Num, Type: pc.Type, Mode: pc.Mode, Key: pc.Key}
			src.hasPHI = true
		}
		src.cols = append(src.cols, c)
	}
	src.setKeys(rel)
	if configured || len(rel.PHIDeps) > 0 {
		src.relIdent = rel.Schema + "." + rel.Name
		a.rels[src.relIdent] = true
	}
	src.cols = renameCols(src.cols, rv.Alias)
	return src, nil
}

func renameCols(cols []colInfo, al *pg.Alias) []colInfo {
	if al == nil || len(al.Colnames) == 0 {
		return cols
	}
	out := append([]colInfo(nil), cols...)
	j := 0
	for i := range out {
		if out[i].opaque {
			break
		}
		if j < len(al.Colnames) {
			out[i].name = al.Colnames[j].GetString_().GetSval()
			j++
		}
	}
	for ; j < len(al.Colnames); j++ {
		if len(out) > 0 && out[len(out)-1].opaque {
			break
		}
		out = append(out, colInfo{name: al.Colnames[j].GetString_().GetSval()})
	}
	return out
}

func (a *analyzer) refuseCol(phi *PHIColumn, loc int32, what, hint string) error {
	return pgerr.Newf(pgerr.FeatureNotSupported, "%s is not supported on PHI column %s (%s)", what, phi.Ident, phi.Mode).
		WithHint(hint).WithPosition(position(a.sql, loc))
}

func hintFor(phi *PHIColumn) string {
	if phi.Mode == Randomized {
		return hintRandomized
	}
	return hintDeterministic
}

func (a *analyzer) requireDet(phi *PHIColumn, loc int32, what string) error {
	if phi.Mode != Deterministic {
		return a.refuseCol(phi, loc, what, hintRandomized)
	}
	if a.preds == nil {
		a.preds = map[string]bool{}
	}
	a.preds[phi.Ident] = true
	return nil
}

// wrote records a PHI column the statement assigns.
func (a *analyzer) wrote(phi *PHIColumn) {
	if a.writes == nil {
		a.writes = map[string]bool{}
	}
	a.writes[phi.Ident] = true
}

func sameKey(x, y *PHIColumn) bool {
	return x.Key == y.Key && x.Type == y.Type && x.Mode == y.Mode
}

func (a *analyzer) refuseKeys(x, y *PHIColumn, loc int32, what string) error {
	return pgerr.Newf(pgerr.FeatureNotSupported, "%s between PHI columns %s (%s, key %s) and %s (%s, key %s) is not supported", what, x.Ident, x.Mode, x.Key, y.Ident, y.Mode, y.Key).
		WithHint(hintKeys).WithPosition(position(a.sql, loc))
}

func describe(n *pg.Node) string {
	m := n.ProtoReflect()
	f := m.WhichOneof(m.Descriptor().Oneofs().Get(0))
	if f == nil {
		return "expression"
	}
	switch name := string(f.Message().Name()); name {
	case "CaseExpr", "CaseWhen":
		return "CASE"
	case "CoalesceExpr":
		return "COALESCE"
	case "MinMaxExpr":
		return "GREATEST/LEAST"
	case "RowExpr":
		return "a row constructor"
	case "A_ArrayExpr":
		return "an ARRAY constructor"
	case "A_Indirection":
		return "subscripting"
	case "CollateClause":
		return "COLLATE"
	case "BooleanTest":
		return "IS TRUE/FALSE"
	default:
		return fmt.Sprintf("expression (%s)", name)
	}
}

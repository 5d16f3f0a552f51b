package rewrite

import (
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The catalog overlay (docs/sql-support.md, "Catalog introspection").
//
// A PHI column is bytea in the database, so an ORM that reads its column
// types from the catalog sees bytea and encodes values as bytea. phiproxy
// keeps, in a schema of the database (the overlay schema), a view
// pg_attribute with exactly pg_catalog.pg_attribute's rows and columns in
// which each configured PHI column has its logical type (atttypid,
// atttypmod and the type's length, alignment, storage and collation), and
// a view columns that is information_schema.columns over that overlay, and
// a view pg_constraint without the envelope CHECK constraints of the PHI
// columns (which a plaintext twin does not have). In every SELECT it plans,
// a reference to pg_catalog.pg_attribute, pg_catalog.pg_constraint or
// information_schema.columns is replaced with the overlay's view, as pin.go
// schema-qualifies relation names: an Edit of the name's bytes, so the rest
// of the text is sent as written. format_type(a.atttypid, a.atttypmod) and
// joins to pg_type on atttypid then follow by themselves.
//
// The proxy turns the overlay on (WithCatalogOverlay) only when it has
// found it current for its config and catalog; otherwise, and for any
// reference the planner cannot tell resolves to the system catalog, the
// text is sent unchanged and introspection shows bytea, as without the
// overlay.

// PlannerOption configures a Planner.
type PlannerOption func(*Planner)

// WithCatalogOverlay makes the planner send catalog reads in SELECT
// statements to the overlay views in schema (overlay.go), in sessions
// connected to database, the one that holds them: in any other database
// the schema does not exist, and catalog reads are sent as written.
func WithCatalogOverlay(schema, database string) PlannerOption {
	return func(p *Planner) { p.overlay, p.overlayDB = schema, database }
}

// overlayTarget is one catalog relation the overlay serves.
type overlayTarget struct {
	schema, name string // the system relation
	view         string // the overlay's view of it
}

var overlayTargets = []overlayTarget{
	{"pg_catalog", "pg_attribute", "pg_attribute"},
	{"information_schema", "columns", "columns"},
	{"pg_catalog", "pg_constraint", "pg_constraint"},
}

// overlayWords join the pre-check when the overlay is on: a text without
// one of them reads no overlay target (U& escapes are parsed anyway).
var overlayWords = []string{"pg_attribute", "information_schema", "pg_constraint"}

// overlayEdits adds to st the edits that send the catalog reads of its
// SELECT n (or of the SELECT a DECLARE … CURSOR runs) to the overlay.
// path and temp are the session's search_path and temporary relations
// when the statement runs. All or nothing: a statement with a reference
// to one of the catalogs that the edits cannot keep meaning the same is
// left unchanged.
func (p *Planner) overlayEdits(sql string, st *Statement, n *pg.Node, path []string, temp string) {
	if d := n.GetDeclareCursorStmt(); d != nil {
		n = d.Query // DECLARE c CURSOR FOR SELECT …: the cursor reads the overlay
	}
	if n.GetSelectStmt() == nil {
		return
	}
	w := overlayWalk{ctes: map[string]bool{}}
	w.walk(n.ProtoReflect(), false)
	if w.abandon {
		return
	}
	var edits []Edit
	add := func(loc int, parts []string, prefix bool, view string) bool {
		end, ok := dottedNameEnd(sql, loc, parts, prefix)
		if !ok || loc < st.Offset || end > st.Offset+st.Length {
			return false
		}
		edits = append(edits, Edit{Offset: loc, Length: end - loc, Text: pinText(p.overlay, view)})
		return true
	}
	for _, r := range w.rvs {
		t, ok := overlayFor(r.rv, path, temp, w.ctes)
		if !ok {
			if isSystemTarget(r.rv.Schemaname, r.rv.Relname) {
				return // the system catalog, or a name that may be it
			}
			continue
		}
		if r.sampled {
			return // a view cannot be sampled
		}
		parts := []string{t.name}
		if r.rv.Schemaname != "" {
			parts = []string{t.schema, t.name}
		}
		if !add(int(r.rv.Location), parts, false, t.view) {
			return
		}
	}
	// pg_catalog.pg_attribute.attname (SQLAlchemy writes its catalog
	// queries so) names the FROM item by its relation's qualified name.
	for _, c := range w.qualified {
		if !add(int(c.Location), c.parts, true, c.view) {
			return
		}
	}
	if len(edits) > 0 {
		st.Edits = append(st.Edits, edits...)
		sort.Slice(st.Edits, func(i, j int) bool { return st.Edits[i].Offset < st.Edits[j].Offset })
	}
}

// isSystemTarget reports whether schema.name may name a relation the
// overlay serves.
func isSystemTarget(schema, name string) bool {
	for _, t := range overlayTargets {
		if name == t.name && (schema == t.schema || schema == "" && t.schema == "pg_catalog") {
			return true
		}
	}
	return false
}

// overlayFor returns the overlay target rv reads, if it surely reads one.
func overlayFor(rv *pg.RangeVar, path []string, temp string, ctes map[string]bool) (overlayTarget, bool) {
	if rv.Catalogname != "" {
		return overlayTarget{}, false
	}
	for _, t := range overlayTargets {
		if rv.Relname != t.name {
			continue
		}
		switch {
		case rv.Schemaname == t.schema:
			return t, true
		case rv.Schemaname != "" || t.schema != "pg_catalog":
			// Unqualified columns means information_schema.columns only
			// with information_schema on the path: left as written.
			return overlayTarget{}, false
		case ctes[t.name] || hasTemp(temp, t.name):
			return overlayTarget{}, false
		}
		// Unqualified: pg_catalog is searched first unless the path names
		// it later; then a schema before it could hold the name.
		for i, s := range path {
			if s != "pg_catalog" {
				continue
			}
			for _, before := range path[:i] {
				if !isTempSchema(before) {
					return overlayTarget{}, false
				}
			}
		}
		return t, true
	}
	return overlayTarget{}, false
}

// overlayWalk collects the RangeVars of a statement that read a relation,
// the names of its CTEs, and the column references that name an overlay
// target by its qualified name. abandon says the statement reads or
// writes a target in a way a view cannot stand in for.
type overlayWalk struct {
	rvs       []overlayRef
	ctes      map[string]bool
	qualified []qualifiedRef
	abandon   bool
}

type overlayRef struct {
	rv      *pg.RangeVar
	sampled bool
}

type qualifiedRef struct {
	Location int32
	parts    []string
	view     string
}

// overlayNotRead lists, by message and field name, the RangeVars that are
// not read as a relation a view could replace: written relations, created
// ones, FOR UPDATE OF names.
var overlayNotRead = map[protoreflect.FullName]protoreflect.Name{
	"pg_query.LockingClause": "locked_rels",
	"pg_query.IntoClause":    "rel",
	"pg_query.InsertStmt":    "relation",
	"pg_query.UpdateStmt":    "relation",
	"pg_query.DeleteStmt":    "relation",
	"pg_query.MergeStmt":     "relation",
}

func (w *overlayWalk) walk(m protoreflect.Message, sampled bool) {
	switch x := m.Interface().(type) {
	case *pg.CommonTableExpr:
		w.ctes[x.Ctename] = true
	case *pg.RangeVar:
		w.rvs = append(w.rvs, overlayRef{x, sampled})
		return
	case *pg.RangeTableSample:
		sampled = true
	case *pg.LockingClause:
		// Row locks on a view over a function are refused by the server.
		w.abandon = true
		return
	case *pg.ColumnRef:
		w.columnRef(x)
		return
	}
	skip := overlayNotRead[m.Descriptor().FullName()]
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		if skip != "" && fd.Name() == skip {
			if rv, ok := v.Message().Interface().(*pg.RangeVar); ok && isSystemTarget(rv.Schemaname, rv.Relname) {
				w.abandon = true
			}
			return true
		}
		if fd.IsList() {
			for i := 0; i < v.List().Len(); i++ {
				w.walk(v.List().Get(i).Message(), sampled)
			}
		} else {
			w.walk(v.Message(), sampled)
		}
		return true
	})
}

// columnRef records schema.relation.column references to a target.
func (w *overlayWalk) columnRef(c *pg.ColumnRef) {
	if len(c.Fields) < 3 {
		return
	}
	var names []string
	for _, f := range c.Fields {
		names = append(names, f.GetString_().GetSval()) // "" for *
	}
	for _, t := range overlayTargets {
		for i := 1; i < len(names); i++ {
			if names[i] != t.name || names[i-1] != t.schema {
				continue
			}
			if i != 1 || len(names) != 3 {
				w.abandon = true // database.schema.relation.column, or a field of a field
				return
			}
			w.qualified = append(w.qualified, qualifiedRef{c.Location, []string{t.schema, t.name}, t.view})
		}
	}
}

// dottedNameEnd returns the end of the name at sql[loc] when it reads as
// exactly the dotted name parts (each folded as PostgreSQL folds an
// identifier; a U& identifier is not read). Unless prefix, the name must
// not be followed by another '.'; with prefix, it must be.
func dottedNameEnd(sql string, loc int, parts []string, prefix bool) (int, bool) {
	i := loc
	for k, want := range parts {
		if k > 0 {
			i = skipSpace(sql, i)
			if i >= len(sql) || sql[i] != '.' {
				return 0, false
			}
			i = skipSpace(sql, i+1)
		}
		if i >= len(sql) {
			return 0, false
		}
		if c := sql[i]; (c == 'u' || c == 'U') && strings.HasPrefix(sql[i+1:], `&"`) {
			return 0, false
		}
		end, ok := nameTokenEndAny(sql, i)
		if !ok || end.name != want {
			return 0, false
		}
		i = end.end
	}
	k := skipSpace(sql, i)
	if dot := k < len(sql) && sql[k] == '.'; dot != prefix {
		return 0, false
	}
	return i, true
}

type nameToken struct {
	end  int
	name string
}

// nameTokenEndAny reads the plain or double-quoted identifier at sql[i].
func nameTokenEndAny(sql string, i int) (nameToken, bool) {
	switch c := sql[i]; {
	case c == '"':
		e, ok := quotedEnd(sql, i, '"', false)
		if !ok {
			return nameToken{}, false
		}
		return nameToken{e, strings.ReplaceAll(sql[i+1:e-1], `""`, `"`)}, true
	case isIdentStart(c):
		j := i
		for j < len(sql) && isIdentByte(sql[j]) {
			j++
		}
		return nameToken{j, foldASCII(sql[i:j])}, true
	}
	return nameToken{}, false
}

// OverlayColumnsView turns the definition of information_schema.columns
// (pg_get_viewdef, read with search_path = pg_catalog) into the overlay's:
// each read of pg_attribute becomes a read of fn, a function returning
// SETOF pg_catalog.pg_attribute (so whole-row references such as
// information_schema._pg_truetypid(a.*, t.*) keep their type). It fails
// unless it replaces at least one reference and every reference it sees.
func OverlayColumnsView(def, fn string) (string, bool) {
	def = strings.TrimSpace(def)
	def = strings.TrimSuffix(def, ";")
	tree, err := pg.Parse(def)
	if err != nil || len(tree.Stmts) != 1 || tree.Stmts[0].Stmt.GetSelectStmt() == nil {
		return "", false
	}
	w := overlayWalk{ctes: map[string]bool{}}
	w.walk(tree.Stmts[0].Stmt.ProtoReflect(), false)
	sort.Slice(w.rvs, func(i, j int) bool { return w.rvs[i].rv.Location < w.rvs[j].rv.Location })
	var b strings.Builder
	pos, n := 0, 0
	for _, r := range w.rvs {
		rv := r.rv
		if rv.Relname != "pg_attribute" {
			continue
		}
		if rv.Catalogname != "" || rv.Schemaname != "" && rv.Schemaname != "pg_catalog" || int(rv.Location) < pos {
			return "", false
		}
		parts := []string{"pg_attribute"}
		if rv.Schemaname != "" {
			parts = []string{"pg_catalog", "pg_attribute"}
		}
		end, ok := dottedNameEnd(def, int(rv.Location), parts, false)
		if !ok {
			return "", false
		}
		b.WriteString(def[pos:rv.Location])
		b.WriteString(fn)
		pos = end
		n++
	}
	if n == 0 || w.abandon || len(w.qualified) > 0 {
		return "", false
	}
	b.WriteString(def[pos:])
	return b.String(), true
}

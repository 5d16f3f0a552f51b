package config

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"

	"github.com/jackc/pgx/v5"
)

// Querier is what the catalog loader needs from a connection: *pgx.Conn,
// pgx.Tx and *pgxpool.Pool all satisfy it. The loader only reads.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// RelKind is pg_class.relkind for the relation kinds the catalog keeps.
type RelKind byte

// Relation kinds.
const (
	KindTable       RelKind = 'r'
	KindView        RelKind = 'v'
	KindMatView     RelKind = 'm'
	KindPartitioned RelKind = 'p'
	KindForeign     RelKind = 'f'
)

// String names the kind as PostgreSQL's documentation does.
func (k RelKind) String() string {
	switch k {
	case KindTable:
		return "table"
	case KindView:
		return "view"
	case KindMatView:
		return "materialized view"
	case KindPartitioned:
		return "partitioned table"
	case KindForeign:
		return "foreign table"
	}
	return fmt.Sprintf("relkind %q", byte(k))
}

// ByteaOID is the type OID every PHI column must have in PostgreSQL.
const ByteaOID = 17

// Attribute is one live (not dropped) column of a relation.
type Attribute struct {
	Num      int16  // pg_attribute.attnum, > 0
	Name     string // attname
	TypeOID  uint32 // atttypid
	TypeName string // format_type(atttypid, atttypmod), e.g. "character varying(20)"
}

// ColumnRef names a column by relation OID and attnum, as RowDescription and
// pg_depend do. Num 0 stands for the whole row.
type ColumnRef struct {
	RelOID uint32
	Num    int16
}

// Relation is a table, view, materialized view, partitioned table or foreign
// table in a user schema.
type Relation struct {
	OID     uint32
	Schema  string
	Name    string
	Kind    RelKind
	Columns []Attribute // ordered by attnum; dropped columns are absent

	// Parents are the OIDs of the relations this one inherits from or is a
	// partition of (pg_inherits), so a query on a partition of a PHI table
	// can be recognised.
	Parents []uint32

	// DependsOn is, for views and materialized views, every column of
	// another relation the view's rewrite rule references (pg_depend on
	// pg_rewrite), sorted. PostgreSQL records these per view, not per view
	// column, so which output column carries which input is not known here.
	DependsOn []ColumnRef
	// PHIDeps is the subset of the transitive closure of DependsOn (through
	// views over views) that are configured PHI columns, sorted. A whole-row
	// reference to a PHI table counts as depending on all its PHI columns.
	PHIDeps []ColumnRef

	// Keys are the primary key and the unique keys whose columns are all
	// NOT NULL, as attnums: only valid, immediate (not deferrable) indexes
	// on plain columns without a predicate, and none on a table with
	// inheritance children (their rows are not covered). Grouping by one
	// makes each group a single row (rewrite.Relation.Keys).
	Keys [][]int16

	byName map[string]int // column name → index into Columns
}

// Ident is "schema.name".
func (r *Relation) Ident() string { return r.Schema + "." + r.Name }

// Column returns the live column called name.
func (r *Relation) Column(name string) (Attribute, bool) {
	i, ok := r.byName[name]
	if !ok {
		return Attribute{}, false
	}
	return r.Columns[i], true
}

// ColumnByNum returns the live column with attnum num.
func (r *Relation) ColumnByNum(num int16) (Attribute, bool) {
	i := sort.Search(len(r.Columns), func(i int) bool { return r.Columns[i].Num >= num })
	if i < len(r.Columns) && r.Columns[i].Num == num {
		return r.Columns[i], true
	}
	return Attribute{}, false
}

// Function is a user-defined function or procedure whose body may read or
// write a PHI relation.
type Function struct {
	OID    uint32
	Schema string
	Name   string
	// Touches are the OIDs of PHI relations (configured tables and views
	// that depend on PHI columns) the function mentions, sorted.
	Touches []uint32
}

// Catalog is an immutable snapshot of the live schema. Version increases
// with every reload so that cached plans keyed by it go stale. Its methods
// are safe for concurrent use because nothing mutates it after LoadCatalog.
type Catalog struct {
	Version uint64

	rels      map[uint32]*Relation
	byName    map[string]uint32 // "schema.name" → OID
	phi       map[ColumnRef]Column
	functions map[string][]*Function // name → functions (all schemas) touching PHI

	// searchPaths are ALTER ROLE/DATABASE … SET search_path defaults,
	// keyed by role and database ("" for any); serverSearchPath is the
	// server's own setting.
	searchPaths      map[[2]string]string
	serverSearchPath string
	// roleDefaults are the ALTER ROLE/DATABASE … SET role defaults (the
	// session then starts as another current_user), keyed as searchPaths.
	roleDefaults map[[2]string]bool
}

// Same reports whether c and o describe the same catalog (their Version
// aside): a periodic refresh that finds nothing changed keeps the plans
// cached against the old one.
func (c *Catalog) Same(o *Catalog) bool {
	if c == nil || o == nil {
		return c == o
	}
	a, b := *c, *o
	a.Version, b.Version = 0, 0
	return reflect.DeepEqual(a, b)
}

// SearchPath is the search_path a new session of role on database starts
// with, as PostgreSQL resolves it: ALTER ROLE … IN DATABASE … SET, then
// ALTER ROLE … SET, then ALTER DATABASE … SET, then the server's setting.
// (A client's startup options override it; the proxy applies those.)
func (c *Catalog) SearchPath(role, database string) string {
	for _, k := range [][2]string{{role, database}, {role, ""}, {"", database}} {
		if v, ok := c.searchPaths[k]; ok {
			return v
		}
	}
	if c.serverSearchPath != "" {
		return c.serverSearchPath
	}
	return `"$user", public`
}

// SetsRole reports whether a session of role on database starts with a
// current_user other than role because of an ALTER ROLE/DATABASE … SET
// role default.
func (c *Catalog) SetsRole(role, database string) bool {
	for _, k := range [][2]string{{role, database}, {role, ""}, {"", database}} {
		if c.roleDefaults[k] {
			return true
		}
	}
	return false
}

// Relation returns the relation schema.name. Names are exact (already
// case-folded or unquoted, as in pg_class).
func (c *Catalog) Relation(schema, name string) (*Relation, bool) {
	oid, ok := c.byName[schema+"."+name]
	if !ok {
		return nil, false
	}
	return c.rels[oid], true
}

// RelationByOID returns the relation with the given pg_class OID.
func (c *Catalog) RelationByOID(oid uint32) (*Relation, bool) {
	r, ok := c.rels[oid]
	return r, ok
}

// Relations returns every relation in the snapshot ordered by identity.
func (c *Catalog) Relations() []*Relation {
	out := make([]*Relation, 0, len(c.rels))
	for _, r := range c.rels {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ident() < out[j].Ident() })
	return out
}

// PHIColumn returns the configured PHI column at ref (relation OID and
// attnum, as reported by RowDescription), if that column exists and is PHI.
func (c *Catalog) PHIColumn(ref ColumnRef) (Column, bool) {
	col, ok := c.phi[ref]
	return col, ok
}

// IsPHIRelation reports whether the relation is a configured PHI table, a
// view or materialized view depending on PHI columns, or a child (partition
// or inheritor) of such a table.
func (c *Catalog) IsPHIRelation(oid uint32) bool {
	return c.isPHIRelation(oid, 0)
}

func (c *Catalog) isPHIRelation(oid uint32, depth int) bool {
	r, ok := c.rels[oid]
	if !ok || depth > 64 {
		return false
	}
	if len(r.PHIDeps) > 0 {
		return true
	}
	for _, a := range r.Columns {
		if _, ok := c.phi[ColumnRef{oid, a.Num}]; ok {
			return true
		}
	}
	for _, p := range r.Parents {
		if c.isPHIRelation(p, depth+1) {
			return true
		}
	}
	return false
}

// PHIFunctions returns the functions called name (in any schema) whose
// body mentions a PHI relation. The rewriter refuses calls to them.
//
// Best effort: a function is flagged when PostgreSQL records a dependency of
// it on a PHI relation (SQL-standard bodies, BEGIN ATOMIC) or when its source
// text (prosrc) contains a PHI relation's name as a whole word, case-
// insensitively. Names assembled at run time (EXECUTE with concatenation,
// format()) are not found; C and internal functions are not inspected.
func (c *Catalog) PHIFunctions(name string) []*Function {
	return c.functions[name]
}

// Functions returns every function PHIFunctions would return for some
// name: all the functions whose body mentions a PHI relation (same best
// effort), ordered by schema, name and OID. The slice is new; the
// Functions are the snapshot's and must not be modified.
func (c *Catalog) Functions() []*Function {
	var out []*Function
	for _, list := range c.functions {
		out = append(out, list...)
	}
	slices.SortFunc(out, func(a, b *Function) int {
		return cmp.Or(cmp.Compare(a.Schema, b.Schema), cmp.Compare(a.Name, b.Name), cmp.Compare(a.OID, b.OID))
	})
	return out
}

// Check verifies cfg against the snapshot: every configured PHI column must
// exist in an ordinary or partitioned table and have type bytea (any type
// for a column in enforce: observe, which is still plaintext). All
// problems are returned at once (errors.Join), each as
// "FILE:LINE: phi column schema.table.column: …".
func (c *Catalog) Check(cfg *Config) error {
	file := cfg.Path
	if file == "" {
		file = "config"
	}
	var errs []error
	for _, col := range cfg.Columns() {
		bad := func(format string, args ...any) {
			prefix := fmt.Sprintf("%s:%d: phi column %s: ", file, col.Line, col.Ident())
			if col.Line <= 0 {
				prefix = fmt.Sprintf("%s: phi column %s: ", file, col.Ident())
			}
			errs = append(errs, errors.New(prefix+fmt.Sprintf(format, args...)))
		}
		r, ok := c.Relation(col.Schema, col.Table)
		if !ok {
			bad("relation %s does not exist", col.Relation())
			continue
		}
		if r.Kind != KindTable && r.Kind != KindPartitioned {
			bad("%s is a %s; PHI columns must be declared on tables", col.Relation(), r.Kind)
			continue
		}
		a, ok := r.Column(col.Name)
		if !ok {
			bad("column %s does not exist in %s", col.Name, col.Relation())
			continue
		}
		if a.TypeOID != ByteaOID && !col.Observed() {
			bad("column has type %s in the database; a PHI column must be bytea (it stores ciphertext; the logical type %s is declared in the config)", a.TypeName, col.Type)
		}
	}
	return errors.Join(errs...)
}

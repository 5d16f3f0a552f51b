package config

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/pgerr"
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

// loadSearchPaths reads the per-role and per-database search_path defaults
// (pg_db_role_setting is a shared catalog: visible from any database).
func (c *Catalog) loadSearchPaths(ctx context.Context, q Querier) error {
	c.searchPaths = map[[2]string]string{}
	rows, err := q.Query(ctx, `SELECT coalesce(r.rolname, ''), coalesce(d.datname, ''), s.setconfig
FROM pg_catalog.pg_db_role_setting s
LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase`)
	if err != nil {
		return catalogErr("role and database settings", err)
	}
	defer rows.Close()
	for rows.Next() {
		var role, db string
		var settings []string
		if err := rows.Scan(&role, &db, &settings); err != nil {
			return catalogErr("role and database settings", err)
		}
		for _, kv := range settings {
			if v, ok := strings.CutPrefix(kv, "search_path="); ok {
				c.searchPaths[[2]string{role, db}] = v
			}
		}
	}
	if err := rows.Err(); err != nil {
		return catalogErr("role and database settings", err)
	}
	rows.Close()
	srv, err := q.Query(ctx, `SELECT reset_val FROM pg_catalog.pg_settings WHERE name = 'search_path'`)
	if err != nil {
		return catalogErr("the server's search_path", err)
	}
	defer srv.Close()
	for srv.Next() {
		if err := srv.Scan(&c.serverSearchPath); err != nil {
			return catalogErr("the server's search_path", err)
		}
	}
	if err := srv.Err(); err != nil {
		return catalogErr("the server's search_path", err)
	}
	return nil
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
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Schema != b.Schema {
			return a.Schema < b.Schema
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.OID < b.OID
	})
	return out
}

// LoadCatalog reads the live schema through q and builds snapshot version.
// cfg decides which columns are PHI; columns it names that do not exist are
// simply not marked (Check reports them).
func LoadCatalog(ctx context.Context, q Querier, cfg *Config, version uint64) (*Catalog, error) {
	c := &Catalog{
		Version:   version,
		rels:      map[uint32]*Relation{},
		byName:    map[string]uint32{},
		phi:       map[ColumnRef]Column{},
		functions: map[string][]*Function{},
	}
	if err := c.loadRelations(ctx, q); err != nil {
		return nil, err
	}
	if cfg != nil {
		for _, col := range cfg.Columns() {
			r, ok := c.Relation(col.Schema, col.Table)
			if !ok {
				continue
			}
			if a, ok := r.Column(col.Name); ok {
				c.phi[ColumnRef{r.OID, a.Num}] = col
			}
		}
	}
	if err := c.loadViewDeps(ctx, q); err != nil {
		return nil, err
	}
	if err := c.loadFunctions(ctx, q); err != nil {
		return nil, err
	}
	if err := c.loadSearchPaths(ctx, q); err != nil {
		return nil, err
	}
	return c, nil
}

const userSchemas = `n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'`

func (c *Catalog) loadRelations(ctx context.Context, q Querier) error {
	rows, err := q.Query(ctx, `SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND `+userSchemas)
	if err != nil {
		return catalogErr("relations", err)
	}
	for rows.Next() {
		r := &Relation{byName: map[string]int{}}
		var kind string
		if err := rows.Scan(&r.OID, &r.Schema, &r.Name, &kind); err != nil {
			rows.Close()
			return catalogErr("relations", err)
		}
		r.Kind = RelKind(kind[0])
		c.rels[r.OID] = r
		c.byName[r.Ident()] = r.OID
	}
	if err := rows.Err(); err != nil {
		return catalogErr("relations", err)
	}

	rows, err = q.Query(ctx, `SELECT a.attrelid, a.attnum, a.attname, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'p', 'f') AND `+userSchemas+`
ORDER BY a.attrelid, a.attnum`)
	if err != nil {
		return catalogErr("columns", err)
	}
	for rows.Next() {
		var rel uint32
		var a Attribute
		if err := rows.Scan(&rel, &a.Num, &a.Name, &a.TypeOID, &a.TypeName); err != nil {
			rows.Close()
			return catalogErr("columns", err)
		}
		r, ok := c.rels[rel]
		if !ok {
			continue // created between the two queries
		}
		r.byName[a.Name] = len(r.Columns)
		r.Columns = append(r.Columns, a)
	}
	if err := rows.Err(); err != nil {
		return catalogErr("columns", err)
	}

	rows, err = q.Query(ctx, `SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits ORDER BY inhrelid, inhseqno`)
	if err != nil {
		return catalogErr("inheritance", err)
	}
	for rows.Next() {
		var child, parent uint32
		if err := rows.Scan(&child, &parent); err != nil {
			rows.Close()
			return catalogErr("inheritance", err)
		}
		if r, ok := c.rels[child]; ok {
			r.Parents = append(r.Parents, parent)
		}
	}
	return catalogErr("inheritance", rows.Err())
}

func (c *Catalog) loadViewDeps(ctx context.Context, q Querier) error {
	rows, err := q.Query(ctx, `SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid <> r.ev_class
ORDER BY 1, 2, 3`)
	if err != nil {
		return catalogErr("view dependencies", err)
	}
	for rows.Next() {
		var view, ref uint32
		var sub int32
		if err := rows.Scan(&view, &ref, &sub); err != nil {
			rows.Close()
			return catalogErr("view dependencies", err)
		}
		if r, ok := c.rels[view]; ok {
			r.DependsOn = append(r.DependsOn, ColumnRef{ref, int16(sub)})
		}
	}
	if err := rows.Err(); err != nil {
		return catalogErr("view dependencies", err)
	}
	// Close over views of views. Dependencies between views form a DAG
	// (PostgreSQL forbids cycles), but guard against it anyway.
	memo := map[uint32][]ColumnRef{}
	var resolve func(oid uint32, depth int) []ColumnRef
	resolve = func(oid uint32, depth int) []ColumnRef {
		if deps, ok := memo[oid]; ok {
			return deps
		}
		r, ok := c.rels[oid]
		if !ok || depth > 64 {
			return nil
		}
		set := map[ColumnRef]bool{}
		for _, d := range r.DependsOn {
			if d.Num == 0 { // whole-row reference
				for ref := range c.phi {
					if ref.RelOID == d.RelOID {
						set[ref] = true
					}
				}
			} else if _, ok := c.phi[d]; ok {
				set[d] = true
			}
			if dr, ok := c.rels[d.RelOID]; ok && len(dr.DependsOn) > 0 {
				for _, x := range resolve(d.RelOID, depth+1) {
					set[x] = true
				}
			}
		}
		deps := make([]ColumnRef, 0, len(set))
		for d := range set {
			deps = append(deps, d)
		}
		sortRefs(deps)
		memo[oid] = deps
		return deps
	}
	for oid, r := range c.rels {
		if len(r.DependsOn) > 0 {
			if deps := resolve(oid, 0); len(deps) > 0 {
				r.PHIDeps = deps
			}
		}
	}
	return nil
}

func sortRefs(refs []ColumnRef) {
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].RelOID != refs[j].RelOID {
			return refs[i].RelOID < refs[j].RelOID
		}
		return refs[i].Num < refs[j].Num
	})
}

func (c *Catalog) loadFunctions(ctx context.Context, q Querier) error {
	phiRels := map[uint32]*Relation{}
	for oid := range c.rels {
		if c.IsPHIRelation(oid) {
			phiRels[oid] = c.rels[oid]
		}
	}
	if len(phiRels) == 0 {
		return nil
	}
	type fn struct {
		Function
		touch map[uint32]bool
	}
	fns := map[uint32]*fn{}
	rows, err := q.Query(ctx, `SELECT p.oid, n.nspname, p.proname, COALESCE(p.prosrc, '')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE l.lanname NOT IN ('internal', 'c') AND `+userSchemas)
	if err != nil {
		return catalogErr("functions", err)
	}
	for rows.Next() {
		var f fn
		var src string
		if err := rows.Scan(&f.OID, &f.Schema, &f.Name, &src); err != nil {
			rows.Close()
			return catalogErr("functions", err)
		}
		src = strings.ToLower(src)
		for oid, r := range phiRels {
			if containsWord(src, strings.ToLower(r.Name)) {
				if f.touch == nil {
					f.touch = map[uint32]bool{}
				}
				f.touch[oid] = true
			}
		}
		if f.touch != nil {
			g := f
			fns[f.OID] = &g
		}
	}
	if err := rows.Err(); err != nil {
		return catalogErr("functions", err)
	}
	// SQL-standard bodies (BEGIN ATOMIC / RETURN) have an empty prosrc but
	// recorded dependencies.
	rows, err = q.Query(ctx, `SELECT DISTINCT p.oid, n.nspname, p.proname, d.refobjid
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_proc p ON p.oid = d.objid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass`)
	if err != nil {
		return catalogErr("function dependencies", err)
	}
	for rows.Next() {
		var f fn
		var ref uint32
		if err := rows.Scan(&f.OID, &f.Schema, &f.Name, &ref); err != nil {
			rows.Close()
			return catalogErr("function dependencies", err)
		}
		if _, ok := phiRels[ref]; !ok {
			continue
		}
		g, ok := fns[f.OID]
		if !ok {
			g = &f
			g.touch = map[uint32]bool{}
			fns[f.OID] = g
		}
		g.touch[ref] = true
	}
	if err := rows.Err(); err != nil {
		return catalogErr("function dependencies", err)
	}
	for _, f := range fns {
		out := f.Function
		for oid := range f.touch {
			out.Touches = append(out.Touches, oid)
		}
		sort.Slice(out.Touches, func(i, j int) bool { return out.Touches[i] < out.Touches[j] })
		c.functions[out.Name] = append(c.functions[out.Name], &out)
	}
	for _, list := range c.functions {
		sort.Slice(list, func(i, j int) bool { return list[i].OID < list[j].OID })
	}
	return nil
}

// containsWord reports whether word occurs in s not surrounded by identifier
// characters.
func containsWord(s, word string) bool {
	if word == "" {
		return false
	}
	for from := 0; ; {
		i := strings.Index(s[from:], word)
		if i < 0 {
			return false
		}
		i += from
		end := i + len(word)
		if (i == 0 || !isIdentByte(s[i-1])) && (end == len(s) || !isIdentByte(s[end])) {
			return true
		}
		from = i + 1
	}
}

func isIdentByte(b byte) bool {
	return b == '_' || b == '$' || b >= 0x80 || ('a' <= b && b <= 'z') || ('A' <= b && b <= 'Z') || ('0' <= b && b <= '9')
}

func catalogErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return pgerr.Newf(pgerr.ConnectionException, "catalog: loading %s: %v", what, err).WithCause(err)
}

// Check verifies cfg against the snapshot: every configured PHI column must
// exist in an ordinary or partitioned table and have type bytea. All
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
		if a.TypeOID != ByteaOID {
			bad("column has type %s in the database; a PHI column must be bytea (it stores ciphertext; the logical type %s is declared in the config)", a.TypeName, col.Type)
		}
	}
	return errors.Join(errs...)
}

// EnvelopeHeader is the first three bytes of every ciphertext envelope
// (DESIGN §4): "PH" and version 1.
const EnvelopeHeader = "PH\x01"

// EnvelopeCheckName is the name of the CHECK constraint that guards col. It
// fits in PostgreSQL's 63-byte identifier limit: long column names are
// shortened and suffixed with a hash of the full identity so that names stay
// unique and stable.
func EnvelopeCheckName(col Column) string {
	name := "phiproxy_" + col.Name + "_envelope"
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(col.Ident()))
	suffix := "_" + hex.EncodeToString(sum[:4]) + "_envelope"
	base := "phiproxy_" + col.Name
	base = base[:63-len(suffix)]
	for !utf8.ValidString(base) { // don't split a UTF-8 sequence
		base = base[:len(base)-1]
	}
	return base + suffix
}

// EnvelopeCheckSQL returns the DDL that makes PostgreSQL itself refuse a
// non-NULL value in col that does not start with the envelope header, so
// plaintext written around the proxy fails with 23514.
//
// The constraint is added NOT VALID: it is enforced for every new INSERT and
// UPDATE at once, but adding it takes only a brief lock and does not scan
// existing rows. Once `phiproxy encrypt` has converted existing data, run
// EnvelopeValidateSQL, which scans under a SHARE UPDATE EXCLUSIVE lock that
// does not block reads or writes. The header is compared with
// decode('504801', 'hex') rather than a '\x…' literal so the statement means
// the same under standard_conforming_strings = off.
func EnvelopeCheckSQL(col Column) string {
	return fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s IS NULL OR substring(%s from 1 for 3) = decode('504801', 'hex')) NOT VALID",
		pgx.Identifier{col.Schema, col.Table}.Sanitize(),
		pgx.Identifier{EnvelopeCheckName(col)}.Sanitize(),
		pgx.Identifier{col.Name}.Sanitize(), pgx.Identifier{col.Name}.Sanitize())
}

// EnvelopeValidateSQL validates the constraint EnvelopeCheckSQL added,
// checking rows that existed before it.
func EnvelopeValidateSQL(col Column) string {
	return fmt.Sprintf("ALTER TABLE %s VALIDATE CONSTRAINT %s",
		pgx.Identifier{col.Schema, col.Table}.Sanitize(), pgx.Identifier{EnvelopeCheckName(col)}.Sanitize())
}

// RoleMemberships returns every role the role named role is a member of,
// directly or through nested groups, including role itself, sorted: the
// roles for which pg_has_role(role, r, 'MEMBER') is true. It fails with
// 42704 if the role does not exist.
func RoleMemberships(ctx context.Context, q Querier, role string) ([]string, error) {
	rows, err := q.Query(ctx, `WITH RECURSIVE m(oid) AS (
  SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1
  UNION
  SELECT a.roleid FROM pg_catalog.pg_auth_members a JOIN m ON a.member = m.oid
)
SELECT r.rolname FROM m JOIN pg_catalog.pg_roles r ON r.oid = m.oid ORDER BY r.rolname`, role)
	if err != nil {
		return nil, catalogErr("role memberships", err)
	}
	roles, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, catalogErr("role memberships", err)
	}
	if len(roles) == 0 {
		return nil, pgerr.Newf(pgerr.UndefinedObject, "role %q does not exist", role)
	}
	return roles, nil
}

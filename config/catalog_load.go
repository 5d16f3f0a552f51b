package config

import (
	"context"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/pgerr"
)

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

	if err := c.loadKeys(ctx, q); err != nil {
		return err
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

// loadKeys reads each relation's keys (Relation.Keys). A partitioned
// table's unique index covers all its partitions; a plain table's does not
// cover its inheritance children, so such a table gets none.
func (c *Catalog) loadKeys(ctx context.Context, q Querier) error {
	rows, err := q.Query(ctx, `SELECT i.indrelid, k.attnums
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (SELECT array_agg(x.attnum ORDER BY x.ord) AS attnums, bool_and(a.attnotnull) AS notnull
  FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS x(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = x.attnum
  WHERE x.ord <= i.indnkeyatts) k
WHERE (i.indisprimary OR i.indisunique) AND i.indisvalid AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL AND k.notnull
  AND cardinality(k.attnums) = i.indnkeyatts
  AND NOT (c.relkind = 'r' AND c.relhassubclass) AND `+userSchemas+`
ORDER BY i.indrelid, i.indisprimary DESC, i.indexrelid`)
	if err != nil {
		return catalogErr("keys", err)
	}
	for rows.Next() {
		var rel uint32
		var key []int16
		if err := rows.Scan(&rel, &key); err != nil {
			rows.Close()
			return catalogErr("keys", err)
		}
		if r, ok := c.rels[rel]; ok {
			r.Keys = append(r.Keys, key)
		}
	}
	return catalogErr("keys", rows.Err())
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

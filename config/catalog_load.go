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
			if !ok || col.Observed() {
				continue // an observed column is plaintext: not PHI here
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
	var rel Relation
	var kind string
	err := eachRow(ctx, q, "relations", `SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND `+userSchemas,
		[]any{&rel.OID, &rel.Schema, &rel.Name, &kind}, func() error {
			r := &Relation{OID: rel.OID, Schema: rel.Schema, Name: rel.Name, Kind: RelKind(kind[0]), byName: map[string]int{}}
			c.rels[r.OID] = r
			c.byName[r.Ident()] = r.OID
			return nil
		})
	if err != nil {
		return err
	}

	var oid uint32
	var a Attribute
	err = eachRow(ctx, q, "columns", `SELECT a.attrelid, a.attnum, a.attname, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'p', 'f') AND `+userSchemas+`
ORDER BY a.attrelid, a.attnum`,
		[]any{&oid, &a.Num, &a.Name, &a.TypeOID, &a.TypeName}, func() error {
			if r, ok := c.rels[oid]; ok { // else created between the two queries
				r.byName[a.Name] = len(r.Columns)
				r.Columns = append(r.Columns, a)
			}
			return nil
		})
	if err != nil {
		return err
	}

	if err := c.loadKeys(ctx, q); err != nil {
		return err
	}

	var child, parent uint32
	return eachRow(ctx, q, "inheritance", `SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits ORDER BY inhrelid, inhseqno`,
		[]any{&child, &parent}, func() error {
			if r, ok := c.rels[child]; ok {
				r.Parents = append(r.Parents, parent)
			}
			return nil
		})
}

// eachRow runs sql (with args) through q, scans each row into scans and
// then calls fn; the rows are closed whatever happens. A failure is a
// catalogErr naming what was being loaded.
func eachRow(ctx context.Context, q Querier, what, sql string, scans []any, fn func() error, args ...any) error {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return catalogErr(what, err)
	}
	_, err = pgx.ForEachRow(rows, scans, fn)
	return catalogErr(what, err)
}

// loadKeys reads each relation's keys (Relation.Keys). A partitioned
// table's unique index covers all its partitions; a plain table's does not
// cover its inheritance children, so such a table gets none.
func (c *Catalog) loadKeys(ctx context.Context, q Querier) error {
	var rel uint32
	var key []int16
	return eachRow(ctx, q, "keys", `SELECT i.indrelid, k.attnums
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
ORDER BY i.indrelid, i.indisprimary DESC, i.indexrelid`,
		[]any{&rel, &key}, func() error {
			if r, ok := c.rels[rel]; ok {
				r.Keys = append(r.Keys, key)
			}
			return nil
		})
}

func (c *Catalog) loadViewDeps(ctx context.Context, q Querier) error {
	var view, ref uint32
	var sub int32
	err := eachRow(ctx, q, "view dependencies", `SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid <> r.ev_class
ORDER BY 1, 2, 3`,
		[]any{&view, &ref, &sub}, func() error {
			if r, ok := c.rels[view]; ok {
				r.DependsOn = append(r.DependsOn, ColumnRef{ref, int16(sub)})
			}
			return nil
		})
	if err != nil {
		return err
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
	var f Function
	var src string
	err := eachRow(ctx, q, "functions", `SELECT p.oid, n.nspname, p.proname, COALESCE(p.prosrc, '')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE l.lanname NOT IN ('internal', 'c') AND `+userSchemas,
		[]any{&f.OID, &f.Schema, &f.Name, &src}, func() error {
			src := strings.ToLower(src)
			var touch map[uint32]bool
			for oid, r := range phiRels {
				if ContainsWord(src, strings.ToLower(r.Name)) {
					if touch == nil {
						touch = map[uint32]bool{}
					}
					touch[oid] = true
				}
			}
			if touch != nil {
				fns[f.OID] = &fn{Function: f, touch: touch}
			}
			return nil
		})
	if err != nil {
		return err
	}
	// SQL-standard bodies (BEGIN ATOMIC / RETURN) have an empty prosrc but
	// recorded dependencies.
	var ref uint32
	err = eachRow(ctx, q, "function dependencies", `SELECT DISTINCT p.oid, n.nspname, p.proname, d.refobjid
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_proc p ON p.oid = d.objid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass`,
		[]any{&f.OID, &f.Schema, &f.Name, &ref}, func() error {
			if _, ok := phiRels[ref]; !ok {
				return nil
			}
			g, ok := fns[f.OID]
			if !ok {
				g = &fn{Function: f, touch: map[uint32]bool{}}
				fns[f.OID] = g
			}
			g.touch[ref] = true
			return nil
		})
	if err != nil {
		return err
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

// ContainsWord reports whether word occurs in s not surrounded by
// identifier characters (letters, digits, _, $ and bytes of multibyte
// UTF-8 characters are not a boundary). It is case-sensitive: lower-case
// both sides for PostgreSQL's folded identifiers.
func ContainsWord(s, word string) bool {
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
	c.roleDefaults = map[[2]string]bool{}
	var role, db string
	var settings []string
	err := eachRow(ctx, q, "role and database settings", `SELECT coalesce(r.rolname, ''), coalesce(d.datname, ''), s.setconfig
FROM pg_catalog.pg_db_role_setting s
LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase`,
		[]any{&role, &db, &settings}, func() error {
			for _, kv := range settings {
				if v, ok := strings.CutPrefix(kv, "search_path="); ok {
					c.searchPaths[[2]string{role, db}] = v
				}
				if strings.HasPrefix(kv, "role=") || strings.HasPrefix(kv, "session_authorization=") {
					c.roleDefaults[[2]string{role, db}] = true
				}
			}
			return nil
		})
	if err != nil {
		return err
	}
	return eachRow(ctx, q, "the server's search_path", `SELECT reset_val FROM pg_catalog.pg_settings WHERE name = 'search_path'`,
		[]any{&c.serverSearchPath}, func() error { return nil })
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

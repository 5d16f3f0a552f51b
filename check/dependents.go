package check

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

// The objects that depend on PHI columns or run on PHI tables: each sees
// ciphertext where its author expected values, and the proxy refuses
// statements that use it (docs/sql-support.md).

// relationDependents reports views and materialized views that read PHI
// columns: statements on them are refused through the proxy. (Declaring a
// view's columns under phi: is a relation_not_table finding: the proxy
// loads PHI columns of tables only.)
func (r *run) relationDependents(context.Context) error {
	for _, rel := range r.cat.Relations() {
		if (rel.Kind != config.KindView && rel.Kind != config.KindMatView) || len(rel.PHIDeps) == 0 {
			continue
		}
		if len(r.cfg.PHI[rel.Ident()]) > 0 {
			continue // relation_not_table says it
		}
		reads := r.refList(rel.PHIDeps)
		if rel.Kind == config.KindView {
			r.add(Warning, KindView, "view "+rel.Ident(),
				fmt.Sprintf("reads PHI columns %s; statements on it are refused through the proxy (0A000)", reads),
				fmt.Sprintf("query the base table through the proxy instead and DROP VIEW %s", pgx.Identifier{rel.Schema, rel.Name}.Sanitize()))
			continue
		}
		r.add(Warning, KindMatView, "materialized view "+rel.Ident(),
			fmt.Sprintf("stores a copy of PHI columns %s (plaintext if it was refreshed before encryption); statements on it are refused through the proxy (0A000)", reads),
			fmt.Sprintf("query the base table through the proxy instead and DROP MATERIALIZED VIEW %s (dropping it removes the copy)", pgx.Identifier{rel.Schema, rel.Name}.Sanitize()))
	}
	return nil
}

// refList names the PHI columns of refs.
func (r *run) refList(refs []config.ColumnRef) string {
	var out []string
	for _, ref := range refs {
		if col, ok := r.phi(ref.RelOID, ref.Num); ok {
			out = append(out, col.Ident())
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// functions reports functions and procedures whose body names a PHI
// relation (the catalog's best effort: prosrc words and SQL-standard
// bodies' dependencies).
func (r *run) functions(ctx context.Context) error {
	fns := r.cat.Functions()
	if len(fns) == 0 {
		return nil
	}
	oids := make([]uint32, 0, len(fns))
	for _, f := range fns {
		oids = append(oids, f.OID)
	}
	type proc struct{ sig, kind string }
	procs := map[uint32]proc{}
	if err := collect(ctx, r.q, "functions", `SELECT oid, oid::pg_catalog.regprocedure::text, prokind::text FROM pg_catalog.pg_proc WHERE oid = ANY($1)`,
		[]any{oids}, func(rows pgx.Rows) error {
			var oid uint32
			var p proc
			if err := rows.Scan(&oid, &p.sig, &p.kind); err != nil {
				return err
			}
			procs[oid] = p
			return nil
		}); err != nil {
		return err
	}
	for _, f := range fns {
		p, ok := procs[f.OID]
		if !ok || f.Schema == config.OverlaySchema {
			continue // dropped meanwhile, or phiproxy's own
		}
		var rels []string
		for _, oid := range f.Touches {
			rels = append(rels, r.relName(oid))
		}
		touches := strings.Join(rels, ", ")
		if p.kind == "p" {
			r.add(Warning, KindProcedure, "procedure "+qualified(f.Schema, p.sig),
				fmt.Sprintf("its body names PHI relation %s: CALL is refused through the proxy, and inside it PHI columns hold ciphertext", touches),
				"move the logic that reads or writes PHI into the application, through the proxy, or drop the procedure")
			continue
		}
		r.add(Warning, KindFunction, "function "+qualified(f.Schema, p.sig),
			fmt.Sprintf("its body names PHI relation %s: calls are refused through the proxy, and inside it PHI columns hold ciphertext", touches),
			"move the logic that reads or writes PHI into the application, through the proxy, or drop the function")
	}
	return nil
}

// qualified prefixes sig (regprocedure text, qualified only when not on
// the search_path) with schema when it lacks one.
func qualified(schema, sig string) string {
	if strings.HasPrefix(sig, schema+".") || strings.HasPrefix(sig, `"`+schema+`".`) {
		return sig
	}
	return schema + "." + sig
}

// triggers reports the user triggers on PHI tables: they run on the
// ciphertext the proxy writes (NEW.ssn is the envelope).
func (r *run) triggers(ctx context.Context) error {
	return collect(ctx, r.q, "triggers", `SELECT t.tgname::text, t.tgrelid, t.tgfoid::pg_catalog.regprocedure::text
FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND t.tgrelid = ANY($1)
ORDER BY t.tgrelid, t.tgname`, []any{r.withChildren}, func(rows pgx.Rows) error {
		var name, fn string
		var rel uint32
		if err := rows.Scan(&name, &rel, &fn); err != nil {
			return err
		}
		r.add(Warning, KindTrigger, fmt.Sprintf("trigger %s on %s", name, r.relName(rel)),
			fmt.Sprintf("runs %s on a PHI table: it sees and writes PHI columns as ciphertext (bytea)", fn),
			fmt.Sprintf("make sure %s does not read or set PHI columns, or move that logic into the application; DROP TRIGGER %s ON %s",
				fn, pgx.Identifier{name}.Sanitize(), r.quotedRel(rel)))
		return nil
	})
}

// rules reports rewrite rules (other than views' own) on PHI tables or
// whose actions read PHI columns.
func (r *run) rules(ctx context.Context) error {
	type rule struct {
		name  string
		rel   uint32
		reads map[config.ColumnRef]bool
	}
	var order []uint32
	rules := map[uint32]*rule{}
	if err := collect(ctx, r.q, "rules", `SELECT w.oid, w.rulename::text, w.ev_class, d.refobjid, d.refobjsubid
FROM pg_catalog.pg_rewrite w
LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = w.oid
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
WHERE w.rulename <> '_RETURN' ORDER BY w.ev_class, w.rulename`, nil, func(rows pgx.Rows) error {
		var oid, rel uint32
		var name string
		var ref *uint32
		var sub *int32
		if err := rows.Scan(&oid, &name, &rel, &ref, &sub); err != nil {
			return err
		}
		ru, ok := rules[oid]
		if !ok {
			ru = &rule{name: name, rel: rel, reads: map[config.ColumnRef]bool{}}
			rules[oid] = ru
			order = append(order, oid)
		}
		if ref != nil && sub != nil {
			if _, ok := r.phi(*ref, int16(*sub)); ok {
				ru.reads[config.ColumnRef{RelOID: *ref, Num: int16(*sub)}] = true
			}
		}
		return nil
	}); err != nil {
		return err
	}
	for _, oid := range order {
		ru := rules[oid]
		onPHI := r.onPHITable(ru.rel)
		if !onPHI && len(ru.reads) == 0 {
			continue
		}
		what := "is on a PHI table: its actions see PHI columns as ciphertext"
		if len(ru.reads) > 0 {
			refs := make([]config.ColumnRef, 0, len(ru.reads))
			for ref := range ru.reads {
				refs = append(refs, ref)
			}
			what = fmt.Sprintf("reads PHI columns %s: its actions see them as ciphertext", r.refList(refs))
			if onPHI {
				what = "is on a PHI table and " + what
			}
		}
		r.add(Warning, KindRule, fmt.Sprintf("rule %s on %s", ru.name, r.relName(ru.rel)), what+"; statements it rewrites are refused through the proxy",
			fmt.Sprintf("DROP RULE %s ON %s, or move its logic into the application", pgx.Identifier{ru.name}.Sanitize(), r.quotedRel(ru.rel)))
	}
	return nil
}

// policies reports row-level-security policies whose expressions read
// PHI columns: they compare ciphertext, so they no longer decide what
// they say (an access control that silently changed meaning).
func (r *run) policies(ctx context.Context) error {
	type policy struct {
		name  string
		rel   uint32
		reads []config.ColumnRef
	}
	var order []string
	pols := map[string]*policy{}
	if err := collect(ctx, r.q, "row-level-security policies", `SELECT p.oid, p.polname::text, p.polrelid, d.refobjid, d.refobjsubid
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0
ORDER BY p.polrelid, p.polname, d.refobjid, d.refobjsubid`, nil, func(rows pgx.Rows) error {
		var oid, rel, ref uint32
		var name string
		var sub int32
		if err := rows.Scan(&oid, &name, &rel, &ref, &sub); err != nil {
			return err
		}
		if _, ok := r.phi(ref, int16(sub)); !ok {
			return nil
		}
		key := fmt.Sprint(oid)
		p, ok := pols[key]
		if !ok {
			p = &policy{name: name, rel: rel}
			pols[key] = p
			order = append(order, key)
		}
		p.reads = append(p.reads, config.ColumnRef{RelOID: ref, Num: int16(sub)})
		return nil
	}); err != nil {
		return err
	}
	for _, k := range order {
		p := pols[k]
		r.add(Error, KindPolicy, fmt.Sprintf("policy %s on %s", p.name, r.relName(p.rel)),
			fmt.Sprintf("its expression reads PHI columns %s: it compares ciphertext, so it no longer admits the rows it says", r.refList(p.reads)),
			fmt.Sprintf("rewrite the policy on non-PHI columns (a tenant or owner id), or DROP POLICY %s ON %s", pgx.Identifier{p.name}.Sanitize(), r.quotedRel(p.rel)))
	}
	return nil
}

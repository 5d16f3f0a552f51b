package check

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

// indexes reports indexes on PHI tables that no statement through the
// proxy can use: on randomized columns (every value encrypts differently),
// with an access method for ranges, ordering or containment (the proxy
// refuses those searches on ciphertext), or computing an expression or
// predicate on a PHI column. A btree or hash index on a deterministic
// column serves equality (and UNIQUE) and is fine.
func (r *run) indexes(ctx context.Context) error {
	return collect(ctx, r.q, "indexes", `SELECT i.indrelid, n.nspname::text, c.relname::text, am.amname::text, i.indkey::int2[], i.indnkeyatts, i.indisunique,
  ARRAY(SELECT d.refobjsubid::int2 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = i.indrelid AND d.refobjsubid > 0
      AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL))
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE i.indrelid = ANY($1) AND NOT c.relispartition ORDER BY n.nspname, c.relname`, []any{r.withChildren}, func(rows pgx.Rows) error {
		var rel uint32
		var schema, name, am string
		var key, deps []int16
		var nkey int16
		var unique bool
		if err := rows.Scan(&rel, &schema, &name, &am, &key, &nkey, &unique, &deps); err != nil {
			return err
		}
		obj := "index " + schema + "." + name
		drop := "DROP INDEX " + pgx.Identifier{schema, name}.Sanitize() + " (if a constraint owns it: ALTER TABLE … DROP CONSTRAINT)"
		plain := map[int16]bool{}
		var randomized, ordering []string
		for i, n := range key {
			if n == 0 || int16(i) >= nkey {
				continue // an expression, or an INCLUDE column (stored, never searched)
			}
			plain[n] = true
			col, ok := r.phi(rel, n)
			switch {
			case !ok:
			case col.Mode == config.ModeRandomized:
				randomized = append(randomized, col.Name)
			case am != "btree" && am != "hash":
				ordering = append(ordering, col.Name)
			}
		}
		var computed []string
		for _, n := range deps {
			if col, ok := r.phi(rel, n); ok && !plain[n] {
				computed = append(computed, col.Name)
			}
		}
		if len(randomized) > 0 {
			what := fmt.Sprintf("indexes randomized PHI column %s: every value encrypts differently, so no statement through the proxy can use it", strings.Join(randomized, ", "))
			if unique {
				what += ", and UNIQUE enforces nothing"
			}
			r.add(Warning, KindIndexRandomized, obj, what, drop+"; declare the column deterministic if equality or uniqueness is needed")
		}
		if len(ordering) > 0 {
			r.add(Warning, KindIndexOrdering, obj,
				fmt.Sprintf("a %s index on PHI column %s serves range, ordering or containment searches, which the proxy refuses on ciphertext", am, strings.Join(ordering, ", ")),
				drop+"; a btree or hash index on a deterministic column serves equality")
		}
		if len(computed) > 0 {
			r.add(Warning, KindIndexExpression, obj,
				fmt.Sprintf("its expression or predicate computes on PHI column %s's ciphertext, which the proxy refuses: no statement through it can use the index", strings.Join(computed, ", ")),
				drop)
		}
		return nil
	})
}

// partitionKeys reports PHI tables partitioned by a PHI column: range and
// list bounds are compared with ciphertext, and hashing randomized
// ciphertext scatters equal values.
func (r *run) partitionKeys(ctx context.Context) error {
	return collect(ctx, r.q, "partition keys", `SELECT partrelid, partstrat::text, partattrs::int2[] FROM pg_catalog.pg_partitioned_table WHERE partrelid = ANY($1) ORDER BY partrelid`,
		[]any{r.withChildren}, func(rows pgx.Rows) error {
			var rel uint32
			var strat string
			var attrs []int16
			if err := rows.Scan(&rel, &strat, &attrs); err != nil {
				return err
			}
			var phi []string
			for _, n := range attrs {
				if col, ok := r.phi(rel, n); ok && (strat != "h" || col.Mode == config.ModeRandomized) {
					phi = append(phi, col.Name)
				}
			}
			if len(phi) == 0 {
				return nil
			}
			how := map[string]string{"r": "range", "l": "list", "h": "hash"}[strat]
			r.add(Warning, KindPartitionKey, "table "+r.relName(rel),
				fmt.Sprintf("is partitioned by %s on PHI column %s: rows are routed by their ciphertext, not their value", how, strings.Join(phi, ", ")),
				"partition by a non-PHI column (recreate the table and move the rows)")
			return nil
		})
}

// foreignKeys reports foreign keys whose column pairs cannot match once
// encrypted: a PHI column against a plaintext one, PHI columns under
// different keys (equal values encrypt differently), or randomized ones.
func (r *run) foreignKeys(ctx context.Context) error {
	return collect(ctx, r.q, "foreign keys", `SELECT conname::text, conrelid, conkey, confrelid, confkey FROM pg_catalog.pg_constraint
WHERE contype = 'f' AND conparentid = 0 AND (conrelid = ANY($1) OR confrelid = ANY($1)) ORDER BY conrelid, conname`, []any{r.withChildren}, func(rows pgx.Rows) error {
		var name string
		var rel, frel uint32
		var key, fkey []int16
		if err := rows.Scan(&name, &rel, &key, &frel, &fkey); err != nil {
			return err
		}
		obj := fmt.Sprintf("foreign key %s on %s", name, r.relName(rel))
		drop := fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s", r.quotedRel(rel), pgx.Identifier{name}.Sanitize())
		for i := range key {
			if i >= len(fkey) {
				break
			}
			a, aok := r.phi(rel, key[i])
			b, bok := r.phi(frel, fkey[i])
			colName := func(relOID uint32, n int16) string {
				if rr, ok := r.cat.RelationByOID(relOID); ok {
					if at, ok := rr.ColumnByNum(n); ok {
						return rr.Ident() + "." + at.Name
					}
				}
				return fmt.Sprintf("%s column %d", r.relName(relOID), n)
			}
			switch {
			case !aok && !bok:
			case aok != bok:
				phiCol, plainCol := a, colName(frel, fkey[i])
				if bok {
					phiCol, plainCol = b, colName(rel, key[i])
				}
				r.add(Error, KindForeignKey, obj,
					fmt.Sprintf("pairs PHI column %s (ciphertext) with non-PHI column %s (plaintext): no encrypted value matches", phiCol.Ident(), plainCol),
					fmt.Sprintf("declare %s as PHI with key: %s (deterministic), or %s", plainCol, phiCol.Key, drop))
			case a.Key != b.Key:
				r.add(Error, KindForeignKey, obj,
					fmt.Sprintf("pairs PHI columns %s and %s under different keys (%s, %s): equal values encrypt differently, so no row matches", a.Ident(), b.Ident(), a.Key, b.Key),
					fmt.Sprintf("give %s key: %s in the config (its values re-encrypted under it), or %s", a.Ident(), b.Key, drop))
			case a.Mode == config.ModeRandomized:
				r.add(Error, KindForeignKey, obj,
					fmt.Sprintf("pairs randomized PHI columns %s and %s: equal values never encrypt alike, so no row matches", a.Ident(), b.Ident()),
					fmt.Sprintf("make key %s deterministic (its values re-encrypted), or %s", a.Key, drop))
			}
		}
		return nil
	})
}

// defaults reports column defaults on PHI columns (a row inserted without
// the column gets the default as written: plaintext, refused by the
// envelope CHECK or stored as is) and generated columns computed from PHI
// columns (computed from ciphertext).
func (r *run) defaults(ctx context.Context) error {
	return collect(ctx, r.q, "column defaults", `SELECT d.adrelid, d.adnum, a.attname::text, a.attgenerated <> '', pg_catalog.pg_get_expr(d.adbin, d.adrelid),
  ARRAY(SELECT p.refobjsubid::int2 FROM pg_catalog.pg_depend p
    WHERE p.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND p.objid = d.oid
      AND p.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND p.refobjid = d.adrelid AND p.refobjsubid > 0)
FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE d.adrelid = ANY($1) ORDER BY d.adrelid, d.adnum`, []any{r.tableOIDs}, func(rows pgx.Rows) error {
		var rel uint32
		var num int16
		var name, expr string
		var generated bool
		var deps []int16
		if err := rows.Scan(&rel, &num, &name, &generated, &expr, &deps); err != nil {
			return err
		}
		obj := fmt.Sprintf("column %s.%s", r.relName(rel), name)
		alter := fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s", r.quotedRel(rel), pgx.Identifier{name}.Sanitize())
		if col, ok := r.phi(rel, num); ok && !generated {
			r.add(Error, KindDefaultOnPHI, "column "+col.Ident(),
				"has a DEFAULT: a row inserted without the column gets it as written, plaintext (refused by the envelope CHECK, or stored)",
				alter+" DROP DEFAULT (let the application send the value through the proxy)")
			return nil
		}
		var phi []string
		for _, n := range deps {
			if col, ok := r.phi(rel, n); ok && n != num {
				phi = append(phi, col.Name)
			}
		}
		if generated && len(phi) > 0 {
			r.add(Warning, KindGeneratedFromPHI, obj,
				fmt.Sprintf("is generated from PHI column %s: it is computed from ciphertext", strings.Join(phi, ", ")),
				alter+" DROP EXPRESSION, or drop the column; compute it in the application")
		}
		return nil
	})
}

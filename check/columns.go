package check

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// checkConstraint is a CHECK constraint of a PHI table.
type checkConstraint struct {
	Name string
	Cols []int16 // conkey
	Expr string  // pg_get_expr(conbin)
}

// columns reports, per configured column: its relation or itself missing,
// a type other than bytea, plaintext (and values under keys the keyset
// does not hold, or under old keys), and a missing or old-form envelope
// CHECK constraint. Other CHECK constraints on PHI columns evaluate on
// ciphertext and are reported too.
func (r *run) columns(ctx context.Context) error {
	checks := map[uint32][]checkConstraint{}
	if err := collect(ctx, r.q, "CHECK constraints", `SELECT conrelid, conname::text, conkey, pg_catalog.pg_get_expr(conbin, conrelid)
FROM pg_catalog.pg_constraint WHERE contype = 'c' AND conrelid = ANY($1) ORDER BY conrelid, conname`, []any{r.tableOIDs}, func(rows pgx.Rows) error {
		var rel uint32
		var c checkConstraint
		if err := rows.Scan(&rel, &c.Name, &c.Cols, &c.Expr); err != nil {
			return err
		}
		checks[rel] = append(checks[rel], c)
		return nil
	}); err != nil {
		return err
	}
	envelopeChecks := map[string]bool{} // "relOID/name" of the constraints that guard a column
	for _, relName := range r.cfg.Relations() {
		schema, table := splitRel(relName)
		cols := columnsOf(r.cfg, relName)
		rel, ok := r.cat.Relation(schema, table)
		if !ok {
			r.add(Error, KindRelationMissing, "relation "+relName,
				fmt.Sprintf("does not exist; the config declares PHI columns %s on it (the proxy does not start)", names(cols)),
				fmt.Sprintf("create the table, or remove %s from phi: in %s", relName, r.fixCfg))
			continue
		}
		if rel.Kind != config.KindTable && rel.Kind != config.KindPartitioned {
			r.add(Error, KindRelationNotTable, "relation "+relName,
				fmt.Sprintf("is a %s; PHI columns are declared on tables (the proxy does not start)", rel.Kind),
				fmt.Sprintf("declare the PHI columns of the table it reads from instead, in %s", r.fixCfg))
			continue
		}
		for _, col := range cols {
			a, ok := rel.Column(col.Name)
			if !ok {
				r.add(Error, KindColumnMissing, "column "+col.Ident(), "does not exist (the proxy does not start)",
					fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s bytea, or remove the column from phi: in %s",
						pgx.Identifier{col.Schema, col.Table}.Sanitize(), pgx.Identifier{col.Name}.Sanitize(), r.fixCfg))
				continue
			}
			if col.Observed() {
				r.add(Warning, KindColumnObserved, "column "+col.Ident(),
					fmt.Sprintf("is in enforce: observe: plaintext %s in the database, unprotected (statements are only planned and reported)", a.TypeName),
					fmt.Sprintf("phiproxy observe report --config %s; then %s and set enforce: on", r.fixCfg, r.encryptFix(col)))
				continue
			}
			if a.TypeOID != config.ByteaOID {
				r.add(Error, KindColumnNotBytea, "column "+col.Ident(),
					fmt.Sprintf("has type %s in the database, not bytea (the proxy does not start; the logical type %s belongs in the config only)", a.TypeName, col.Type),
					r.encryptFix(col))
			}
			if err := r.sample(ctx, col, a.TypeOID == config.ByteaOID); err != nil {
				return err
			}
			if a.TypeOID == config.ByteaOID {
				if name, ok := r.envelopeConstraint(ctx, col, a.Num, checks[rel.OID]); ok {
					envelopeChecks[fmt.Sprintf("%d/%s", rel.OID, name)] = true
				}
			}
		}
	}
	// Other CHECK constraints that read a PHI column compare ciphertext.
	for _, oid := range r.tableOIDs {
		for _, c := range checks[oid] {
			if envelopeChecks[fmt.Sprintf("%d/%s", oid, c.Name)] {
				continue
			}
			var phi []string
			for _, n := range c.Cols {
				if col, ok := r.phi(oid, n); ok {
					phi = append(phi, col.Name)
				}
			}
			if len(phi) == 0 {
				continue
			}
			r.add(Warning, KindCheckOnPHI, fmt.Sprintf("constraint %s on %s", c.Name, r.relName(oid)),
				fmt.Sprintf("CHECK reads PHI column %s: it evaluates on ciphertext, so it no longer tests what it says", strings.Join(phi, ", ")),
				fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s (the proxy cannot enforce it; check values in the application)",
					r.quotedRel(oid), pgx.Identifier{c.Name}.Sanitize()))
		}
	}
	return nil
}

func columnsOf(cfg *config.Config, rel string) []config.Column {
	var out []config.Column
	for _, c := range cfg.PHI[rel] {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func names(cols []config.Column) string {
	s := make([]string, len(cols))
	for i, c := range cols {
		s[i] = c.Name
	}
	return strings.Join(s, ", ")
}

func (r *run) quotedRel(oid uint32) string {
	if rel, ok := r.cat.RelationByOID(oid); ok {
		return pgx.Identifier{rel.Schema, rel.Name}.Sanitize()
	}
	return fmt.Sprint(oid)
}

func (r *run) encryptFix(col config.Column) string {
	return fmt.Sprintf("phiproxy encrypt --config %s --column %s", r.fixCfg, col.Ident())
}

// envelopePrefix is what every envelope starts with: the header and
// Tink's output prefix byte (the key id follows).
func envelopePrefix() []byte { return crypto.KeyPrefix(0)[:crypto.HeaderLen+1] }

// sample looks at the first bytes of up to SampleSize non-NULL values of
// col. Only counts and key ids leave the database: the classification runs
// in SQL, so no value is read. A column that is not bytea holds plaintext
// whenever it holds anything.
func (r *run) sample(ctx context.Context, col config.Column, bytea bool) error {
	rel, c := pgx.Identifier{col.Schema, col.Table}.Sanitize(), pgx.Identifier{col.Name}.Sanitize()
	var plain, total int64
	kids := map[uint32]int64{}
	var err error
	if !bytea {
		err = r.q.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM (SELECT 1 FROM %s WHERE %s IS NOT NULL LIMIT $1) s`, rel, c),
			r.in.SampleSize).Scan(&total)
		if err != nil && !isPgError(err) {
			err = fmt.Errorf("check: reading the values of %s: %w", col.Ident(), err)
		}
		plain = total
	} else {
		prefix := envelopePrefix()
		err = collect(ctx, r.q, "the values of "+col.Ident(), fmt.Sprintf(`SELECT CASE WHEN pg_catalog.substr(v, 1, %d) = $2 AND pg_catalog.length(v) >= %d
    THEN ('x' || pg_catalog.encode(pg_catalog.substr(v, %d, 4), 'hex'))::bit(32)::int4 END, count(*)
FROM (SELECT %s AS v FROM %s WHERE %s IS NOT NULL LIMIT $1) s GROUP BY 1`, len(prefix), crypto.MinEnvelopeLen, len(prefix)+1, c, rel, c),
			[]any{r.in.SampleSize, prefix}, func(rows pgx.Rows) error {
				var kid *int32
				var n int64
				if err := rows.Scan(&kid, &n); err != nil {
					return err
				}
				total += n
				if kid == nil {
					plain += n
				} else {
					kids[uint32(*kid)] += n
				}
				return nil
			})
	}
	if err != nil {
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
			// Permission denied, a timeout: the rest of the check stands.
			r.add(Warning, KindSampleFailed, "column "+col.Ident(),
				fmt.Sprintf("could not sample its values: SQLSTATE %s: %s", pgErr.Code, pgErr.Message),
				"run phiproxy check with --dsn as a role that may read the table")
			return nil
		}
		return err
	}
	if plain > 0 {
		r.add(Error, KindColumnPlaintext, "column "+col.Ident(),
			fmt.Sprintf("still plaintext: %d of %d sampled non-NULL values are not phiproxy ciphertext", plain, total),
			r.encryptFix(col))
	}
	ks, ok := r.keys[col.Key]
	if !ok || len(kids) == 0 {
		return nil // keyset_missing (keysets) says it
	}
	present := map[uint32]bool{}
	for _, k := range ks.Keys {
		if k.Status != crypto.StatusRetired {
			present[k.ID] = true
		}
	}
	primary := ks.Primary()
	var unknown, old []uint32
	var nUnknown, nOld int64
	for id, n := range kids {
		switch {
		case !present[id]:
			unknown, nUnknown = append(unknown, id), nUnknown+n
		case id != primary:
			old, nOld = append(old, id), nOld+n
		}
	}
	if nUnknown > 0 {
		r.add(Error, KindValuesUnknownKey, "column "+col.Ident(),
			fmt.Sprintf("%d of %d sampled values are under key ids %s that keyset %s does not hold (retired, or another keyset's): they cannot be decrypted", nUnknown, total, ids(unknown), col.Key),
			"restore the keyset from a backup that holds the key; if the key was retired on purpose (crypto-shredding), set the values to NULL")
	}
	if nOld > 0 {
		r.add(Warning, KindValuesOldKey, "column "+col.Ident(),
			fmt.Sprintf("%d of %d sampled values are under older key ids %s of keyset %s, not its primary key %d", nOld, total, ids(old), col.Key, primary),
			fmt.Sprintf("phiproxy reencrypt --config %s --column %s, then phiproxy keys retire the old key", r.fixCfg, col.Ident()))
	}
	return nil
}

func ids(s []uint32) string {
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := make([]string, len(s))
	for i, id := range s {
		out[i] = fmt.Sprint(id)
	}
	return strings.Join(out, ", ")
}

// EnvelopeCheckExpr is the expression of the constraint
// crypto.EnvelopeCheckSQL adds, as PostgreSQL 15 prints it
// (pg_get_expr) for the column whose quote_ident is quotedCol.
func EnvelopeCheckExpr(quotedCol string) string {
	return fmt.Sprintf(`(%s ~~ '\x%x25'::bytea)`, quotedCol, crypto.EnvelopeHeader)
}

// envelopeConstraint reports a missing or old-form envelope CHECK of col
// (attnum num) and returns the name of the constraint that guards it.
func (r *run) envelopeConstraint(ctx context.Context, col config.Column, num int16, checks []checkConstraint) (string, bool) {
	name := crypto.EnvelopeCheckName(col)
	quoted := col.Name
	if err := r.q.QueryRow(ctx, `SELECT pg_catalog.quote_ident($1)`, col.Name).Scan(&quoted); err != nil {
		quoted = pgx.Identifier{col.Name}.Sanitize()
	}
	want := EnvelopeCheckExpr(quoted)
	headerHex := fmt.Sprintf("%x", crypto.EnvelopeHeader)
	var other *checkConstraint
	for i, c := range checks {
		if len(c.Cols) != 1 || c.Cols[0] != num {
			continue
		}
		if c.Expr == want {
			return c.Name, true
		}
		if c.Name == name || strings.Contains(c.Expr, headerHex) {
			other = &checks[i]
		}
	}
	add := crypto.EnvelopeCheckSQL(col)
	if other != nil {
		r.add(Warning, KindConstraintOldForm, "column "+col.Ident(),
			fmt.Sprintf("envelope CHECK constraint %s has an old form: %s (it still refuses plaintext, at a higher cost per written row)", other.Name, other.Expr),
			fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s; %s", pgx.Identifier{col.Schema, col.Table}.Sanitize(), pgx.Identifier{other.Name}.Sanitize(), add))
		return other.Name, true
	}
	r.add(Error, KindConstraintMissing, "column "+col.Ident(),
		"has no envelope CHECK constraint: plaintext written around the proxy is accepted",
		add)
	return "", false
}

func isPgError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

package phi

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// What ORMs send by default (issue 17, items 3 to 5), run through phiproxy
// on public.patients and directly on its plaintext twin patients_plain,
// in every pgx mode (simple and extended protocol): the results must be
// the same.

// twin runs sql on both sides, %[1]s in it standing for the patients
// table and %[2]s for the visits table (a statement may name either, both
// or neither), and fails unless they agree; it returns the rows read
// through phiproxy, each as text.
func twin(t *testing.T, via, direct *pgx.Conn, sql string, args ...any) [][]string {
	t.Helper()
	ctx := testCtx(t)
	read := func(c *pgx.Conn, patients, visits string) [][]string {
		q := strings.NewReplacer("%[1]s", patients, "%[2]s", visits).Replace(sql)
		rows, err := c.Query(ctx, q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]string, error) {
			vals, err := r.Values()
			var row []string
			for _, v := range vals {
				if tm, ok := v.(time.Time); ok {
					v = tm.Format("2006-01-02")
				}
				row = append(row, fmt.Sprint(v))
			}
			return row, err
		})
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return out
	}
	got := read(via, "patients", "visits")
	want := read(direct, "patients_plain", "visits_plain")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s\nthrough phiproxy: %v\ndirect:           %v", sql, got, want)
	}
	return got
}

// ormFixture inserts the same rows through phiproxy and into the twin:
// ids base+1.. with repeated diagnoses, so that grouping by ciphertext
// alone would split groups that grouping by plaintext keeps together.
func ormFixture(t *testing.T, via, direct *pgx.Conn, base int) {
	t.Helper()
	ctx := testCtx(t)
	rows := []struct {
		name, ssn, diagnosis, dob any
		mrn                       any
	}{
		{"Ann", "111-11-1111", "flu", "1980-01-02", int64(1)},
		{"Bob", "222-22-2222", "flu", "1975-12-31", int64(2)},
		{"Cid", "333-33-3333", "cold", nil, nil},
		{"Dee", nil, "flu", "1990-01-02", int64(4)},
		{"Eve", "111-11-1111", nil, nil, int64(1)},
	}
	for i, r := range rows {
		for _, side := range []struct {
			c   *pgx.Conn
			tbl string
		}{{via, "patients"}, {direct, "patients_plain"}} {
			mustExec(t, ctx, side.c, "INSERT INTO "+side.tbl+" (id, name, ssn, diagnosis, dob, mrn) VALUES ($1, $2, $3, $4, $5::date, $6)",
				base+i+1, r.name, r.ssn, r.diagnosis, r.dob, r.mrn)
		}
	}
	mustExec(t, ctx, direct, "DELETE FROM visits")
	mustExec(t, ctx, direct, "DELETE FROM visits_plain")
	for i, ssn := range []string{"111-11-1111", "111-11-1111", "222-22-2222"} {
		for _, side := range []struct {
			c   *pgx.Conn
			tbl string
		}{{via, "visits"}, {direct, "visits_plain"}} {
			mustExec(t, ctx, side.c, "INSERT INTO "+side.tbl+" (id, patient_ssn, note) VALUES ($1, $2, 'n')", base+i+1, ssn)
		}
	}
}

const ormRows = `SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE id BETWEEN $1 AND $2 ORDER BY id`

// TestORMBatchedFlushMikroORM: MikroORM flushes changes to several
// entities in one UPDATE with a CASE per column (AbstractSqlDriver.
// nativeUpdateMany), the column itself in ELSE.
func TestORMBatchedFlushMikroORM(t *testing.T) {
	ctx, p := start(t)
	fixtureModes(t, p, ormFixture, func(t *testing.T, mi int, via, direct *pgx.Conn, base int) {
		flush := `update "%[1]s" set "diagnosis" = case when ("id" = $1) then $2 when ("id" = $3) then $4 else "diagnosis" end, ` +
			`"ssn" = case when ("id" = $5) then $6 when ("id" = $7) then $8 else "ssn" end, ` +
			`"mrn" = case when ("id" = $9) then $10 else "mrn" end ` +
			`where "id" in ($11, $12, $13) returning "id"`
		got := twin(t, via, direct, flush,
			base+1, "asthma", base+3, nil,
			base+2, "999-99-9999", base+3, "333-00-0000",
			base+4, int64(77),
			base+1, base+2, base+3)
		if len(got) != 3 {
			t.Fatalf("returning: %v", got)
		}
		twin(t, via, direct, ormRows, base, base+99)
		// The same with the values inlined, as a client that
		// interpolates parameters sends it.
		lit := fmt.Sprintf(`update "%%[1]s" set "dob" = case when ("id" = %d) then '2001-02-03' when ("id" = %d) then NULL else "dob" end where "id" in (%d, %d) returning "id", "dob"`,
			base+1, base+2, base+1, base+2)
		twin(t, via, direct, lit)
		twin(t, via, direct, ormRows, base, base+99)
		// The deterministic column still finds the new values.
		twin(t, via, direct, `SELECT id FROM %[1]s WHERE ssn = $1 ORDER BY id`, "999-99-9999")
	})
	// A branch that is not a value for the column is still refused.
	via := p.via(pgx.QueryExecModeCacheStatement)
	_, err := via.Exec(ctx, `UPDATE patients SET diagnosis = CASE WHEN id = 1 THEN name ELSE diagnosis END`)
	expectCode(t, err, "0A000", "CASE with a non-PHI column")
}

// TestORMGroupByKeyDjango: Django's annotate(Count(...)) on an unmanaged
// model groups by every column, the randomized ones included, and the
// primary key with them: each group is one row, so the counts match.
func TestORMGroupByKeyDjango(t *testing.T) {
	ctx, p := start(t)
	fixtureModes(t, p, ormFixture, func(t *testing.T, mi int, via, direct *pgx.Conn, base int) {
		django := `SELECT "%[1]s"."id", "%[1]s"."name", "%[1]s"."ssn", "%[1]s"."diagnosis", "%[1]s"."dob", "%[1]s"."mrn", "%[1]s"."active", ` +
			`COUNT("%[2]s"."id") AS "visits__count" FROM "%[1]s" LEFT OUTER JOIN "%[2]s" ON ("%[1]s"."ssn" = "%[2]s"."patient_ssn") ` +
			`WHERE "%[1]s"."id" BETWEEN $1 AND $2 ` +
			`GROUP BY "%[1]s"."id", "%[1]s"."name", "%[1]s"."ssn", "%[1]s"."diagnosis", "%[1]s"."dob", "%[1]s"."mrn", "%[1]s"."active" ORDER BY "%[1]s"."id" ASC`
		got := twin(t, via, direct, django, base, base+99)
		if len(got) != 5 || got[0][7] != "2" {
			t.Fatalf("annotate: %v", got)
		}
		twin(t, via, direct, `SELECT DISTINCT id, diagnosis, dob FROM %[1]s WHERE id BETWEEN $1 AND $2 ORDER BY id`, base, base+99)
		twin(t, via, direct, `SELECT DISTINCT ON (id, diagnosis) id, diagnosis FROM %[1]s WHERE id BETWEEN $1 AND $2 ORDER BY id`, base, base+99)
	})
	// Without the key, grouping by ciphertext would split "flu" in three:
	// still refused.
	via := p.via(pgx.QueryExecModeCacheStatement)
	_, err := via.Exec(ctx, `SELECT diagnosis, count(*) FROM patients GROUP BY name, diagnosis`)
	expectCode(t, err, "0A000", "GROUP BY a randomized column without the key")
}

// TestORMOptionalFilters: sqlc's sqlc.narg filters and updates, with the
// parameter set and NULL. In simple protocol pgx inlines the value in both
// places ('…'::text IS NULL OR ssn = '…'): neither reaches the server in
// the clear.
func TestORMOptionalFilters(t *testing.T) {
	ctx, p := start(t)
	fixtureModes(t, p, ormFixture, func(t *testing.T, mi int, via, direct *pgx.Conn, base int) {
		secret := fmt.Sprintf("NARG-%d-%d", mi, time.Now().UnixNano())
		filter := `SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ($1::text IS NULL OR ssn = $1) AND ($2::int8 IS NULL OR mrn = $2) AND id BETWEEN $3 AND $4 ORDER BY id`
		for _, args := range [][2]any{{"111-11-1111", nil}, {nil, int64(2)}, {nil, nil}, {"111-11-1111", int64(1)}} {
			twin(t, via, direct, filter, args[0], args[1], base, base+99)
		}
		// A value that is nowhere: through phiproxy only (the twin's
		// plaintext would be in the server log by design).
		var n int
		if err := via.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %[1]s WHERE ($1::text IS NULL OR ssn = $1)`, "patients"), secret).Scan(&n); err != nil || n != 0 {
			t.Fatalf("filter on an unknown value: %d rows, %v", n, err)
		}
		coalesce := `SELECT id FROM %[1]s WHERE ssn = COALESCE($1, ssn) AND id BETWEEN $2 AND $3 ORDER BY id`
		if got := twin(t, via, direct, coalesce, nil, base, base+99); len(got) != 4 {
			t.Fatalf("COALESCE(NULL, ssn) matched %v", got)
		}
		twin(t, via, direct, coalesce, "111-11-1111", base, base+99)
		update := `UPDATE %[1]s SET ssn = COALESCE($1, ssn), diagnosis = COALESCE($2, diagnosis), dob = COALESCE($3::date, dob) WHERE id = $4`
		for _, args := range [][3]any{{nil, "gout", nil}, {"444-44-4444", nil, "1999-09-09"}} {
			for _, side := range []struct {
				c   *pgx.Conn
				tbl string
			}{{via, "patients"}, {direct, "patients_plain"}} {
				mustExec(t, ctx, side.c, fmt.Sprintf(update, side.tbl), args[0], args[1], args[2], base+1)
			}
		}
		twin(t, via, direct, ormRows, base, base+99)
		assertNotLogged(t, secret)
	})
	// = COALESCE on a randomized column compares ciphertexts: refused.
	via := p.via(pgx.QueryExecModeCacheStatement)
	_, err := via.Exec(ctx, `SELECT id FROM patients WHERE diagnosis = COALESCE($1, diagnosis)`, "flu")
	expectCode(t, err, "0A000", "= COALESCE on a randomized column")
	if strings.Contains(fmt.Sprint(err), "flu") {
		t.Fatalf("refusal names the value: %v", err)
	}
}

// fixtureModes runs body once per pgx mode, with a connection through the
// proxy and one directly to the plaintext twin, load run from id
// base (a range of its own per mode mi).
func fixtureModes(t *testing.T, p *fixture, load func(t *testing.T, via, direct *pgx.Conn, base int), body func(t *testing.T, mi int, via, direct *pgx.Conn, base int)) {
	for mi, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			direct := connect(t, p.ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
			via := connect(t, p.ctx, p.dsn(), mode)
			base := 1000 * (mi + 1)
			load(t, via, direct, base)
			body(t, mi, via, direct, base)
		})
	}
}

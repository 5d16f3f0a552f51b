package integration

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers database/sql driver "pgx"
	"github.com/lib/pq"
)

// The database/sql stacks: the queries sqlc generates (:one, :many,
// :exec, :execrows, sqlc.narg optional filters, sqlc.slice as = ANY), a
// bulk load (lib/pq: COPY FROM STDIN prepared in a transaction; pgx: a
// prepared INSERT in a transaction), savepoints, upserts, a server-side
// cursor, and the schema read from information_schema as sqlc's and
// migration tools' own checks do.

const sqlPatientCols = "id, name, ssn, diagnosis, notes, dob, active"

const (
	// -- name: GetPatientBySSN :one
	qGetBySSN = "SELECT " + sqlPatientCols + " FROM patients WHERE ssn = $1 LIMIT 1"
	// -- name: ListPatientsBySSNs :many (sqlc.slice, as = ANY on PostgreSQL)
	qListBySSNs = "SELECT " + sqlPatientCols + " FROM patients WHERE ssn = ANY($1::text[]) ORDER BY id"
	// -- name: SearchPatients :many (sqlc.narg filter)
	qSearch = "SELECT " + sqlPatientCols + " FROM patients WHERE ($1::text IS NULL OR ssn = $1) ORDER BY id"
	// -- name: FilterPatients :many (COALESCE form)
	qFilter = "SELECT " + sqlPatientCols + " FROM patients WHERE ssn = COALESCE($1, ssn) ORDER BY id"
	// -- name: CreatePatient :one
	qCreate = "INSERT INTO patients (name, ssn, diagnosis, notes, dob) VALUES ($1, $2, $3, $4, $5) RETURNING " + sqlPatientCols
	// -- name: UpdatePatient :execrows (sqlc.narg optional update)
	qUpdate = "UPDATE patients SET diagnosis = COALESCE($1, diagnosis), notes = COALESCE($2, notes) WHERE ssn = $3"
	// -- name: UpsertPatient :one
	qUpsert = "INSERT INTO patients (name, ssn, diagnosis, notes, dob) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (ssn) DO UPDATE SET diagnosis = EXCLUDED.diagnosis, notes = EXCLUDED.notes RETURNING " + sqlPatientCols
	// -- name: PatientVisits :many
	qVisits = "SELECT v.id, p.name, p.ssn, v.visited_on, v.reason FROM visits v JOIN patients p ON p.ssn = v.patient_ssn ORDER BY v.id"
	// -- name: CountNulls :one
	qCountNulls = "SELECT count(*), count(diagnosis), count(DISTINCT ssn) FROM patients"
	// -- name: DeleteVisitsBySSN :execrows
	qDeleteVisits = "DELETE FROM visits WHERE patient_ssn = $1"
	// information_schema, as migration checks read it
	qColumns = "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'patients' ORDER BY ordinal_position"
)

type sqlScanner interface{ Scan(...any) error }

func scanPatient(r sqlScanner) (ormPatient, error) {
	var p ormPatient
	err := r.Scan(&p.ID, &p.Name, &p.SSN, &p.Diagnosis, &p.Notes, &p.DOB, &p.Active)
	return p, err
}

func queryPatients(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string, args ...any) ([]ormPatient, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []ormPatient{}
	for rows.Next() {
		p, err := scanPatient(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// runSQL runs the database/sql stack with driver "postgres" (lib/pq) or
// "pgx" (pgx's stdlib).
func runSQL(driver string) func(t *testing.T, dsn string, phi bool) string {
	return func(t *testing.T, dsn string, phi bool) string {
		o := &ormLines{t: t}
		must := func(step string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("database/sql %s %s (%s): %v", driver, step, ormMode(phi), err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		db, err := sql.Open(driver, dsn)
		must("open", err)
		defer db.Close()
		db.SetMaxOpenConns(2)

		var cols [][]string
		rows, err := db.QueryContext(ctx, qColumns)
		must("columns", err)
		for rows.Next() {
			var n, ty, null string
			must("scan columns", rows.Scan(&n, &ty, &null))
			cols = append(cols, []string{n, ty, null})
		}
		must("columns", rows.Err())
		o.put(map[string]any{"columns": cols})

		// Bulk load.
		seed := ormSeed()
		tx, err := db.BeginTx(ctx, nil)
		must("begin", err)
		var stmt *sql.Stmt
		if driver == "postgres" {
			stmt, err = tx.PrepareContext(ctx, "COPY patients (name, ssn, diagnosis, notes, dob) FROM STDIN")
		} else {
			stmt, err = tx.PrepareContext(ctx, "INSERT INTO patients (name, ssn, diagnosis, notes, dob) VALUES ($1, $2, $3, $4, $5)")
		}
		must("prepare bulk", err)
		for _, p := range seed {
			_, err := stmt.ExecContext(ctx, p.Name, p.SSN, p.Diagnosis, p.Notes, p.DOB)
			must("bulk row", err)
		}
		if driver == "postgres" {
			_, err = stmt.ExecContext(ctx)
			must("COPY flush", err)
		}
		must("close bulk", stmt.Close())
		must("commit bulk", tx.Commit())
		for _, v := range []struct {
			ssn, on string
			reason  *string
		}{{"111-11-1111", "2024-01-05", str("checkup")}, {"222-22-2222", "2024-02-06", nil}, {"111-11-1111", "2024-03-07", str("follow-up")}, {"999-99-9999", "2024-04-08", str("walk-in")}} {
			_, err := db.ExecContext(ctx, "INSERT INTO visits (patient_ssn, visited_on, reason) VALUES ($1, $2, $3)", v.ssn, date(v.on).Time, v.reason)
			must("visit", err)
		}
		created, err := scanPatient(db.QueryRowContext(ctx, qCreate, "Gus", "777-77-7777", "gout", nil, date("1966-03-04").Time))
		must("CreatePatient", err)
		o.put(map[string]any{"created": created})

		one, err := scanPatient(db.QueryRowContext(ctx, qGetBySSN, "222-22-2222"))
		must("GetPatientBySSN", err)
		o.put(map[string]any{"by ssn": one})
		_, err = scanPatient(db.QueryRowContext(ctx, qGetBySSN, "000-00-0000"))
		o.put(map[string]any{"by unknown ssn": errors.Is(err, sql.ErrNoRows)})
		var list any = pq.Array([]string{"111-11-1111", "444-44-4444", "000-00-0000"})
		if driver == "pgx" {
			list = []string{"111-11-1111", "444-44-4444", "000-00-0000"}
		}
		in, err := queryPatients(ctx, db, qListBySSNs, list)
		must("ListPatientsBySSNs", err)
		o.put(map[string]any{"any": in})
		in, err = queryPatients(ctx, db, "SELECT "+sqlPatientCols+" FROM patients WHERE ssn IN ($1, $2) ORDER BY id", "333-33-3333", "777-77-7777")
		must("IN", err)
		o.put(map[string]any{"in": in})
		for _, arg := range []*string{nil, str("333-33-3333")} {
			got, err := queryPatients(ctx, db, qFilter, arg)
			must("FilterPatients", err)
			o.put(map[string]any{"coalesce filter": got})
			got, err = queryPatients(ctx, db, qSearch, arg)
			must("SearchPatients", err)
			o.put(map[string]any{"narg filter": got})
		}
		var n, nd, ns int
		must("counts", db.QueryRowContext(ctx, qCountNulls).Scan(&n, &nd, &ns))
		o.put(map[string]any{"counts": []int{n, nd, ns}})

		rows, err = db.QueryContext(ctx, qVisits)
		must("PatientVisits", err)
		var joined [][]any
		for rows.Next() {
			var (
				id        int
				name, ssn string
				on        ormDate
				reason    *string
			)
			must("scan visit", rows.Scan(&id, &name, &ssn, &on, &reason))
			joined = append(joined, []any{id, name, ssn, on, reason})
		}
		must("visits", rows.Err())
		o.put(map[string]any{"join": joined})

		// A transaction with a savepoint rolled back.
		tx, err = db.BeginTx(ctx, nil)
		must("begin", err)
		_, err = tx.ExecContext(ctx, qUpdate, "bronchitis", nil, "111-11-1111")
		must("UpdatePatient", err)
		_, err = tx.ExecContext(ctx, "SAVEPOINT before_notes")
		must("SAVEPOINT", err)
		_, err = tx.ExecContext(ctx, qUpdate, nil, "rolled back", "111-11-1111")
		must("UpdatePatient", err)
		_, err = tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT before_notes")
		must("ROLLBACK TO", err)
		_, err = tx.ExecContext(ctx, "UPDATE patients SET dob = $1 WHERE ssn = ANY($2::text[])", date("1975-07-01").Time, list)
		must("update dob", err)
		must("commit", tx.Commit())
		after, err := queryPatients(ctx, db, qListBySSNs, list)
		must("after tx", err)
		o.put(map[string]any{"after transaction": after})
		// A transaction that fails on the server and rolls back.
		tx, err = db.BeginTx(ctx, nil)
		must("begin", err)
		_, err = tx.ExecContext(ctx, "INSERT INTO patients (name, ssn) VALUES ($1, $2)", "Dup", "111-11-1111")
		o.put(map[string]any{"duplicate ssn": pqOrPgxState(err)})
		must("rollback", tx.Rollback())

		for _, u := range []ormPatient{
			{Name: "Ada", SSN: str("111-11-1111"), Diagnosis: str("pneumonia"), Notes: str("upserted"), DOB: date("1980-01-02")},
			{Name: "Fay", SSN: str("666-66-6666"), Diagnosis: str("migraine"), Notes: str("new"), DOB: date("1990-09-09")},
		} {
			p, err := scanPatient(db.QueryRowContext(ctx, qUpsert, u.Name, u.SSN, u.Diagnosis, u.Notes, u.DOB))
			must("UpsertPatient", err)
			o.put(map[string]any{"upserted": p})
		}
		res, err := db.ExecContext(ctx, qDeleteVisits, "999-99-9999")
		must("DeleteVisitsBySSN", err)
		nd64, _ := res.RowsAffected()
		o.put(map[string]any{"deleted visits": nd64})

		// Streaming with a server-side cursor (a large export).
		tx, err = db.BeginTx(ctx, nil)
		must("begin", err)
		_, err = tx.ExecContext(ctx, "DECLARE export NO SCROLL CURSOR FOR SELECT "+sqlPatientCols+" FROM patients WHERE active ORDER BY id")
		must("DECLARE", err)
		var batches [][]ormPatient
		for {
			b, err := queryPatients(ctx, tx, "FETCH FORWARD 3 FROM export")
			must("FETCH", err)
			if len(b) == 0 {
				break
			}
			batches = append(batches, b)
		}
		_, err = tx.ExecContext(ctx, "CLOSE export")
		must("CLOSE", err)
		must("commit", tx.Commit())
		o.put(map[string]any{"cursor": batches})

		if phi {
			for _, r := range []struct{ name, q string }{
				{"database/sql ORDER BY ssn", "SELECT " + sqlPatientCols + " FROM patients ORDER BY ssn"},
				{"database/sql dob BETWEEN", "SELECT " + sqlPatientCols + " FROM patients WHERE dob BETWEEN '1980-01-01' AND '1990-01-01'"},
				{"database/sql ssn LIKE", "SELECT " + sqlPatientCols + " FROM patients WHERE ssn LIKE '111%'"},
			} {
				_, err := queryPatients(ctx, db, r.q)
				o.put(map[string]any{"refused": r.name, "sqlstate": pqOrPgxState(err)})
			}
		}
		return o.b.String()
	}
}

// pqOrPgxState is err's SQLSTATE from either driver.
func pqOrPgxState(err error) string {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return string(pe.Code)
	}
	return sqlstate(err)
}

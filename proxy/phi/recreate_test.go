package phi

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/crypto"
)

// Issue 18, item 6: a PHI table dropped and re-created under the same
// name (its PHI column now plaintext text) while statements on it are
// prepared and cached: before and after the proxy sees the DDL, the
// cached SELECT never serves a wrong answer or ciphertext, and plaintext
// bound for the PHI column is never stored in it.
func TestPHITableRecreatedUnderCachedStatements(t *testing.T) {
	ctx := testCtx(t)
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	if err := InstallCatalogTrigger(ctx, super); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t)
	rec := testKeys(t).Recognizer()
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, "TRUNCATE sq_patients RESTART IDENTITY")
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, conn, "INSERT INTO sq_patients (name, gov_id) VALUES ($1, $2)", "re-1", "gov-before")
	var v string
	if err := conn.QueryRow(ctx, "SELECT gov_id FROM sq_patients WHERE name = $1", "re-1").Scan(&v); err != nil || v != "gov-before" {
		t.Fatalf("before: %q %v", v, err)
	}
	mustExec(t, ctx, direct, "DROP TABLE sq_patients")
	mustExec(t, ctx, direct, "CREATE TABLE sq_patients (id serial PRIMARY KEY, name text, gov_id text UNIQUE, condition bytea, born bytea)")
	mustExec(t, ctx, direct, "INSERT INTO sq_patients (name, gov_id) VALUES ('re-1', 'plain-in-the-new-table')")
	t.Cleanup(func() {
		ctx := context.Background()
		stmts := []string{"DROP TABLE sq_patients", "CREATE TABLE sq_patients (id serial PRIMARY KEY, name text, gov_id bytea UNIQUE, condition bytea, born bytea)"}
		for _, c := range testCfg.Columns() {
			if c.Table == "sq_patients" {
				stmts = append(stmts, crypto.EnvelopeCheckSQL(c))
			}
		}
		for _, q := range stmts {
			if _, err := direct.Exec(ctx, q); err != nil {
				t.Errorf("restoring sq_patients: %s: %v", q, err)
			}
		}
	})
	c := canary(t, "recreate")
	check := func(when string) {
		t.Helper()
		var got []byte
		err := conn.QueryRow(ctx, "SELECT gov_id FROM sq_patients WHERE name = $1", "re-1").Scan(&got)
		if err == nil && (rec.Contains(got) || string(got) != "plain-in-the-new-table") {
			t.Fatalf("%s: the cached SELECT answered %q", when, got)
		}
		_, _ = conn.Exec(ctx, "INSERT INTO sq_patients (name, gov_id) VALUES ($1, $2)", "re-2", c) // the cached INSERT
		var n int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM sq_patients WHERE gov_id = $1", c).Scan(&n); err != nil || n != 0 {
			t.Fatalf("%s: plaintext stored in the PHI column (%d rows, %v)", when, n, err)
		}
	}
	check("before the proxy saw the DDL")
	time.Sleep(catalogBound)
	check("after the catalog refresh")
}

// Issue 18, item 6: a function whose own SET search_path makes its body
// write the PHI table: called through the proxy, the value never lands
// in the PHI column in plaintext (the proxy refuses a function it knows
// reads PHI; the column's type and envelope check refuse the rest).
func TestFunctionSearchPathCannotWritePlaintext(t *testing.T) {
	ctx := testCtx(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	for _, q := range []string{
		"DROP FUNCTION IF EXISTS fsp_write(text)",
		"CREATE FUNCTION fsp_write(v text) RETURNS void LANGUAGE sql SET search_path = public AS $$ INSERT INTO patients (id, ssn) VALUES (7777, convert_to(v, 'UTF8')) $$",
	} {
		mustExec(t, ctx, direct, q)
	}
	t.Cleanup(func() { direct.Exec(context.Background(), "DROP FUNCTION IF EXISTS fsp_write(text)") })
	p := startProxy(t)
	c := canary(t, "fsp")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		conn := connect(t, ctx, p.dsn(), mode)
		_, err := conn.Exec(ctx, "SET search_path = pg_temp, public")
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "SELECT fsp_write($1)", c)
		if err == nil {
			t.Errorf("%s: the function wrote the PHI table", mode)
		}
	}
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM patients WHERE position(convert_to($1, 'UTF8') in coalesce(ssn, ''::bytea)) > 0", c).Scan(&n); err != nil || n != 0 {
		t.Fatalf("plaintext in the PHI column: %d rows, %v", n, err)
	}
}

package phi

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestOtherDatabasePassesThrough: the PHI map is about catalog_dsn's
// database. A plain public.patients in another database of the cluster is
// read and written as written through the proxy: no XX000 on reads, no
// ciphertext in its text columns.
func TestOtherDatabasePassesThrough(t *testing.T) {
	ctx, p := start(t)
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	const other = "phi_other_db"
	mustExec(t, ctx, super, "DROP DATABASE IF EXISTS "+other)
	mustExec(t, ctx, super, "CREATE DATABASE "+other+" OWNER "+appUser)
	t.Cleanup(func() { super.Exec(context.Background(), "DROP DATABASE IF EXISTS "+other+" WITH (FORCE)") })
	inOther := func(dsn string) string { return strings.Replace(dsn, "/"+appDB+"?", "/"+other+"?", 1) }

	direct := connect(t, ctx, inOther(directDSN()), pgx.QueryExecModeExec)
	mustExec(t, ctx, direct, "CREATE TABLE patients (id int4 PRIMARY KEY, ssn text, diagnosis text)")
	mustExec(t, ctx, direct, "INSERT INTO patients VALUES (1, '111-11-1111', 'flu')")

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		c := connect(t, ctx, inOther(p.dsn()), mode)
		mustExec(t, ctx, c, "INSERT INTO patients VALUES (2, $1, 'cold') ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn", "222-22-2222")
		var ssn, diag string
		if err := c.QueryRow(ctx, "SELECT ssn, diagnosis FROM patients WHERE id = 1 AND ssn = '111-11-1111'").Scan(&ssn, &diag); err != nil || ssn != "111-11-1111" || diag != "flu" {
			t.Fatalf("%v: read through the proxy: %q %q %v", mode, ssn, diag, err)
		}
	}
	var ssn string
	if err := direct.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 2").Scan(&ssn); err != nil || ssn != "222-22-2222" {
		t.Fatalf("stored in the other database: %q %v, want the value as written", ssn, err)
	}
}

package phi

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Issue 18, item 6 (last part): a PHI column renamed away and a plain
// column renamed into its name, directly on the server, while prepared
// statements that use it are cached in a session through the proxy.
// Nothing answers silently wrong: the cached statements fail or give
// what PostgreSQL gives; no ciphertext reaches the client and no
// plaintext is stored in the PHI column. (Measured: the cached SELECT
// fails with 0A000 from the server, then XX000 from the proxy once its
// catalog has the change; reads of the renamed PHI column fail with
// XX000; plaintext written to it under its new name is sent — the proxy
// cannot know it holds PHI — and refused by its envelope CHECK: see
// docs/security.md, Known limits.)
func TestPHIColumnSwappedUnderCachedStatements(t *testing.T) {
	ctx := testCtx(t)
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	if err := InstallCatalogTrigger(ctx, super); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t)
	rec := testKeys(t).Recognizer()
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, conn, "INSERT INTO patients (id, name, ssn) VALUES ($1, $2, $3)", 8101, "swap-name", "swap-ssn")
	var ssn string
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 8101).Scan(&ssn); err != nil || ssn != "swap-ssn" {
		t.Fatalf("before: %q, %v", ssn, err)
	}
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 8102, "swap-ssn-2")

	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, "BEGIN; ALTER TABLE patients RENAME COLUMN ssn TO ssn_swapped; ALTER TABLE patients RENAME COLUMN name TO ssn; ALTER TABLE patients RENAME COLUMN ssn_swapped TO name; COMMIT")
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := direct.Exec(ctx, "BEGIN; ALTER TABLE patients RENAME COLUMN ssn TO name_swapped; ALTER TABLE patients RENAME COLUMN name TO ssn; ALTER TABLE patients RENAME COLUMN name_swapped TO name; COMMIT"); err != nil {
			t.Errorf("restoring the columns: %v", err)
		}
	})
	c := canary(t, "swap")
	check := func(t *testing.T, when string) {
		t.Helper()
		// The cached SELECT: an error, or what PostgreSQL answers (the
		// former name column, in the clear) — never ciphertext.
		var v []byte
		err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 8101).Scan(&v)
		if err == nil && (rec.Contains(v) || string(v) != "swap-name") {
			t.Fatalf("%s: the cached SELECT answered %q", when, v)
		}
		// The former PHI column, now named name: never ciphertext to the
		// client.
		vals, _ := readAll(ctx, conn, "SELECT name FROM patients WHERE id = $1", 8101)
		for _, v := range vals {
			if rec.Contains(v) {
				t.Fatalf("%s: ciphertext reached the client", when)
			}
		}
		// Plaintext bound for the former PHI column is never stored there.
		_, _ = conn.Exec(ctx, "INSERT INTO patients (id, name) VALUES ($1, $2)", 8103, c)
		_, _ = conn.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 8104, c) // the cached INSERT
		var stored []byte
		if err := direct.QueryRow(ctx, "SELECT name FROM patients WHERE id IN (8103, 8104) AND name IS NOT NULL").Scan(&stored); err == nil && !rec.Contains(stored) {
			t.Fatalf("%s: plaintext %q stored in the PHI column", when, stored)
		}
		_, _ = direct.Exec(ctx, "DELETE FROM patients WHERE id IN (8103, 8104)")
	}
	check(t, "before the proxy saw the DDL")
	time.Sleep(catalogBound)
	check(t, "after the catalog refresh")
}

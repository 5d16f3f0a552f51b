package phi

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
)

// catalogBound is how soon DDL done directly on the server must be seen
// by a running proxy in these tests (event trigger: at once, debounced;
// periodic refresh: refresh_interval 1s).
const catalogBound = 5 * time.Second

// TestCatalogOutsideDDL: DDL done directly on the server, not through the
// proxy, reaches a running proxy within a bound — through the event
// triggers (with the periodic refresh off) and, where they are absent,
// through the periodic refresh (with catalog_overlay: use, so the proxy
// does not install them).
func TestCatalogOutsideDDL(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trigger bool
	}{{"event trigger", true}, {"periodic refresh", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			direct := connect(t, ctx, directDSN(), pgx.QueryExecModeExec)
			super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
			cfg := *testCfg
			if tc.trigger {
				cfg.Catalog.RefreshInterval = 0
				// pgxpool's parameters are not sent to the server, by the
				// pool nor by the LISTEN connection.
				cfg.CatalogDSN += "&pool_max_conns=2"
			} else {
				for _, tr := range config.CatalogTriggers {
					mustExec(t, ctx, super, "DROP EVENT TRIGGER IF EXISTS "+tr.Name)
				}
				cfg.CatalogOverlay = config.OverlayUse
				cfg.Catalog.RefreshInterval = time.Second
			}
			mustExec(t, ctx, direct, "DROP VIEW IF EXISTS outside_v")
			mustExec(t, ctx, direct, "DROP SCHEMA IF EXISTS outside CASCADE")
			t.Cleanup(func() {
				ctx := context.Background()
				direct.Exec(ctx, "DROP VIEW IF EXISTS outside_v")
				direct.Exec(ctx, "DROP SCHEMA IF EXISTS outside CASCADE")
			})
			mustExec(t, ctx, direct, "TRUNCATE patients")
			p := serveProxy(t, ctx, &cfg)
			installed, _, err := CheckCatalogTrigger(ctx, super)
			if err != nil || installed != tc.trigger {
				t.Fatalf("event triggers installed: %v (%v), want %v", installed, err, tc.trigger)
			}
			c := connect(t, ctx, p.dsn(), pgx.QueryExecModeExec)
			mustExec(t, ctx, c, "INSERT INTO patients (id, name, ssn) VALUES (1, 'a', $1)", "123-45-6789")

			// A new view over PHI not configured as PHI: until the proxy
			// knows it, the literal goes upstream as written and finds no
			// row (a silent wrong answer); once it does, the view is
			// refused as docs/sql-support.md says.
			mustExec(t, ctx, direct, "CREATE VIEW outside_v AS SELECT id, ssn FROM patients")
			seen(t, ctx, "the new view", func() bool {
				var id int
				err := c.QueryRow(ctx, "SELECT id FROM outside_v WHERE ssn = '123-45-6789'").Scan(&id)
				return sqlstate(err) == "0A000"
			})

			// A plain table under a PHI table's name in another schema, first
			// on the search_path: read as written once the proxy knows it.
			mustExec(t, ctx, direct, "CREATE SCHEMA outside")
			mustExec(t, ctx, direct, "CREATE TABLE outside.patients (id int4, ssn text)")
			mustExec(t, ctx, direct, "INSERT INTO outside.patients VALUES (1, 'plain')")
			mustExec(t, ctx, c, "SET search_path = outside, public")
			seen(t, ctx, "the shadowing table", func() bool {
				var ssn string
				err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 1").Scan(&ssn)
				return err == nil && ssn == "plain"
			})
			// Dropped: the PHI table is back.
			mustExec(t, ctx, direct, "DROP TABLE outside.patients")
			seen(t, ctx, "the dropped shadowing table", func() bool {
				var ssn string
				err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 1").Scan(&ssn)
				return err == nil && ssn == "123-45-6789"
			})
		})
	}
}

// seen polls ok until it holds, failing the test after catalogBound.
func seen(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	if !testenv.Eventually(catalogBound, 50*time.Millisecond, ok) {
		t.Fatalf("%s done directly on the server was not seen by the proxy within %v", what, catalogBound)
	}
}

// TestCatalogTriggerSkipsTemporary: the event triggers announce DDL on
// lasting objects, not on a session's temporary tables (which would
// otherwise make every instance refresh at the rate an app creates them).
func TestCatalogTriggerSkipsTemporary(t *testing.T) {
	ctx := testCtx(t)
	watchCatalog(t, ctx)
	listener := connect(t, ctx, directDSN(), pgx.QueryExecModeExec)
	mustExec(t, ctx, listener, "LISTEN "+config.CatalogChannel)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeExec)
	notified := func() bool {
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := listener.WaitForNotification(wctx)
		return err == nil
	}
	mustExec(t, ctx, direct, "CREATE TEMP TABLE scratch_tmp (a int)")
	mustExec(t, ctx, direct, "DROP TABLE scratch_tmp")
	if notified() {
		t.Fatal("a temporary table's CREATE and DROP were announced")
	}
	mustExec(t, ctx, direct, "CREATE TABLE scratch_lasting (a int)")
	if !notified() {
		t.Fatal("CREATE TABLE was not announced")
	}
	mustExec(t, ctx, direct, "DROP TABLE scratch_lasting")
	if !notified() {
		t.Fatal("DROP TABLE was not announced")
	}
}

// TestCatalogRefreshKeepsUnchangedSnapshot: a refresh that finds the
// catalog as it was (the periodic one, DDL on unrelated objects) keeps the
// snapshot and the plans cached against it; one that finds a change
// swaps it.
func TestCatalogRefreshKeepsUnchangedSnapshot(t *testing.T) {
	ctx, p := start(t)
	before := p.phi.cur.Load()
	if err := p.phi.RefreshCatalog(ctx); err != nil {
		t.Fatal(err)
	}
	if p.phi.cur.Load() != before {
		t.Fatal("a refresh that found nothing changed replaced the snapshot")
	}
	direct := p.direct(pgx.QueryExecModeExec)
	mustExec(t, ctx, direct, "CREATE VIEW refresh_v AS SELECT id, ssn FROM patients")
	t.Cleanup(func() { direct.Exec(context.Background(), "DROP VIEW IF EXISTS refresh_v") })
	if err := p.phi.RefreshCatalog(ctx); err != nil {
		t.Fatal(err)
	}
	if p.phi.cur.Load() == before {
		t.Fatal("a refresh after CREATE VIEW kept the old snapshot")
	}
}

// TestOverlayInstallAddsCatalogTrigger: phiproxy overlay install (Overlay
// with install) adds the event triggers, idempotently; status reports
// them.
func TestOverlayInstallAddsCatalogTrigger(t *testing.T) {
	ctx := testCtx(t)
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	for _, tr := range config.CatalogTriggers {
		mustExec(t, ctx, super, "DROP EVENT TRIGGER IF EXISTS "+tr.Name)
	}
	st, err := Overlay(ctx, testCfg, "", false)
	if err != nil || st.Trigger {
		t.Fatalf("status after DROP EVENT TRIGGER: trigger %v, %v", st.Trigger, err)
	}
	for i := range 2 {
		st, err := Overlay(ctx, testCfg, "", true)
		if err != nil || !st.Trigger || !st.Current {
			t.Fatalf("install %d: trigger %v, overlay current %v, %v", i+1, st.Trigger, st.Current, err)
		}
	}
}

// TestCatalogListenSurvivesRestart: after the server restarts, the LISTEN
// connection is reopened and DDL done directly is seen again, through the
// event trigger alone (the periodic refresh off).
func TestCatalogListenSurvivesRestart(t *testing.T) {
	ctx := testCtx(t)
	watchCatalog(t, ctx).Close(ctx)
	cfg := *testCfg
	cfg.Catalog.RefreshInterval = 0
	p := serveProxy(t, ctx, &cfg)

	if err := testCluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	if err := testCluster.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeExec)
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeExec)
	// The refresh the reconnection brings, then DDL after it.
	time.Sleep(2 * catalogRetry)
	mustExec(t, ctx, direct, "DROP VIEW IF EXISTS restart_v")
	mustExec(t, ctx, direct, "CREATE VIEW restart_v AS SELECT id, ssn FROM patients")
	t.Cleanup(func() { direct.Exec(context.Background(), "DROP VIEW IF EXISTS restart_v") })
	seen(t, ctx, "a view created after the restart", func() bool {
		var id int
		err := c.QueryRow(ctx, "SELECT id FROM restart_v WHERE ssn = '123-45-6789'").Scan(&id)
		return sqlstate(err) == "0A000"
	})
}

// Issue 18, item 6: a PHI table dropped and re-created under the same
// name (its PHI column now plaintext text) while statements on it are
// prepared and cached: before and after the proxy sees the DDL, the
// cached SELECT never serves a wrong answer or ciphertext, and plaintext
// bound for the PHI column is never stored in it.
func TestPHITableRecreatedUnderCachedStatements(t *testing.T) {
	ctx, p := startWatched(t)
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
	rec := testKeys(t).Recognizer()
	mustExec(t, ctx, direct, "TRUNCATE sq_patients RESTART IDENTITY")
	conn := p.via(pgx.QueryExecModeCacheStatement)
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
	ctx, p := startWatched(t)
	conn := p.via(pgx.QueryExecModeCacheStatement)
	rec := testKeys(t).Recognizer()
	mustExec(t, ctx, conn, "INSERT INTO patients (id, name, ssn) VALUES ($1, $2, $3)", 8101, "swap-name", "swap-ssn")
	var ssn string
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 8101).Scan(&ssn); err != nil || ssn != "swap-ssn" {
		t.Fatalf("before: %q, %v", ssn, err)
	}
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 8102, "swap-ssn-2")

	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
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

// TestPlannedPHIColumnMustBeBytea: a column the snapshot still takes for
// a PHI column but that the server reports as another type (altered
// directly, the proxy not refreshed yet) fails the statement with XX000 at
// its RowDescription: nothing it holds is decrypted or forwarded. Here
// the column became text holding bytea's hex spelling of an envelope,
// which the proxy would otherwise decrypt and serve.
func TestPlannedPHIColumnMustBeBytea(t *testing.T) {
	ctx := testCtx(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeExec)
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	mustExec(t, ctx, direct, "DROP TABLE IF EXISTS stale_phi")
	mustExec(t, ctx, direct, "CREATE TABLE stale_phi (id int4 PRIMARY KEY, ssn bytea)")
	t.Cleanup(func() { direct.Exec(context.Background(), "DROP TABLE IF EXISTS stale_phi") })
	for _, tr := range config.CatalogTriggers {
		mustExec(t, ctx, super, "DROP EVENT TRIGGER IF EXISTS "+tr.Name)
	}

	// The proxy never refreshes by itself here: no triggers, no period.
	cfg := *testCfg
	cfg.CatalogOverlay = config.OverlayUse
	cfg.Catalog.RefreshInterval = 0
	cfg.PHI = maps.Clone(testCfg.PHI)
	col := testCfg.PHI["public.patients"]["ssn"]
	col.Table = "stale_phi"
	cfg.PHI["public.stale_phi"] = map[string]config.Column{"ssn": col}
	p := serveProxy(t, ctx, &cfg)

	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeExec)
	mustExec(t, ctx, c, "INSERT INTO stale_phi VALUES (1, $1)", "123-45-6789")
	mustExec(t, ctx, direct, "ALTER TABLE stale_phi ALTER COLUMN ssn TYPE text USING ssn::text")

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheDescribe} {
		c := connect(t, ctx, p.dsn(), mode)
		var ssn string
		err := c.QueryRow(ctx, "SELECT ssn FROM stale_phi WHERE id = 1").Scan(&ssn)
		if sqlstate(err) != "XX000" {
			t.Fatalf("%v: got %q, %v; want XX000", mode, ssn, err)
		}
	}
}

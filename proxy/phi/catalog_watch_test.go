package phi

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
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
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	if err := InstallCatalogTrigger(ctx, super); err != nil {
		t.Fatal(err)
	}
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
	ctx := testCtx(t)
	p := startProxy(t)
	before := p.phi.cur.Load()
	if err := p.phi.RefreshCatalog(ctx); err != nil {
		t.Fatal(err)
	}
	if p.phi.cur.Load() != before {
		t.Fatal("a refresh that found nothing changed replaced the snapshot")
	}
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeExec)
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
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	if err := InstallCatalogTrigger(ctx, super); err != nil {
		t.Fatal(err)
	}
	super.Close(ctx)
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

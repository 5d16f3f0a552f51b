package phi

import (
	"context"
	"maps"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

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

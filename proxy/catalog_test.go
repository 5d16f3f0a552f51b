package proxy

import (
	"context"
	"testing"
	"time"
)

// TestCatalogSurvivesUpstreamRestart: the catalog connections (verifier
// lookups, role memberships) are checked before use, so the first login
// after the upstream cluster restarts works instead of failing on the dead
// connection the previous login left behind.
func TestCatalogSurvivesUpstreamRestart(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr(), "auth: {mode: terminate}"))
	conn := connect(t, ctx, p.dsn())
	conn.Close(ctx)

	if err := testCluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := testCluster.StartServer(sctx); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		conn := connect(t, ctx, p.dsn())
		var n int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
			t.Fatalf("login %d after the restart: %v", i+1, err)
		}
		conn.Close(ctx)
	}
}

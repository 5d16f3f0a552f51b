package phi

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestStatus(t *testing.T) {
	ctx, p := start(t)
	st := p.phi.Status()
	if !st.PHI || !st.KeysLoaded || st.CatalogVersion == 0 || time.Since(st.CatalogRead) > time.Minute {
		t.Fatalf("after New: %+v; want PHI, keys loaded, a catalog version, read just now", st)
	}
	c := p.via(pgx.QueryExecModeSimpleProtocol)
	for i := 0; i < 2; i++ {
		if _, err := c.Exec(ctx, "SELECT ssn FROM patients WHERE id = 7"); err != nil {
			t.Fatal(err)
		}
	}
	after := p.phi.Status()
	if after.PlanCache.Hits <= st.PlanCache.Hits || after.PlanCache.Misses <= st.PlanCache.Misses {
		t.Errorf("plan cache stats did not move: %+v then %+v", st.PlanCache, after.PlanCache)
	}
	time.Sleep(10 * time.Millisecond)
	if err := p.phi.RefreshCatalog(ctx); err != nil {
		t.Fatal(err)
	}
	if got := p.phi.Status(); !got.CatalogRead.After(st.CatalogRead) {
		t.Errorf("a refresh did not move CatalogRead: %v then %v", st.CatalogRead, got.CatalogRead)
	}
}

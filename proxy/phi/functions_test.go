package phi

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestFunctionsTouchingPHI: the planner learns the functions that touch
// PHI from config.Catalog.Functions, so calling one is refused while other
// functions run.
func TestFunctionsTouchingPHI(t *testing.T) {
	ctx := testCtx(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, "CREATE FUNCTION fn_count_patients() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM patients'")
	mustExec(t, ctx, direct, "CREATE FUNCTION fn_plain() RETURNS int LANGUAGE sql AS 'SELECT 41 + 1'")
	t.Cleanup(func() {
		_, _ = direct.Exec(context.Background(), "DROP FUNCTION IF EXISTS fn_count_patients(), fn_plain()")
	})
	p := startProxy(t)
	if fs := p.phi.cur.Load().cat.Functions(); len(fs) != 1 || fs[0].Name != "fn_count_patients" {
		t.Fatalf("catalog functions touching PHI: %+v", fs)
	}
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	var n int64
	err := conn.QueryRow(ctx, "SELECT fn_count_patients()").Scan(&n)
	expectCode(t, err, "0A000", "a function that reads a PHI relation")
	if err := conn.QueryRow(ctx, "SELECT fn_plain()").Scan(&n); err != nil || n != 42 {
		t.Fatalf("a function that does not touch PHI: %d, %v", n, err)
	}
	stillWorks(t, ctx, conn)
}

package phi

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// BenchmarkPointSelect compares a point select returning two PHI columns
// with the same select on the plaintext twin, both through phiproxy (the
// issue's target: PHI ≥ 0.8× the pass-through TPS).
func BenchmarkPointSelect(b *testing.B) {
	ctx := context.Background()
	p := startProxy(b)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		conn := connect(b, ctx, p.dsn(), mode)
		for _, tbl := range []string{"patients", "patients_plain"} {
			if _, err := conn.Exec(ctx, "INSERT INTO "+tbl+" (id, ssn, diagnosis) VALUES (95000, $1, $2) ON CONFLICT (id) DO NOTHING", "123-45-6789", "flu"); err != nil {
				b.Fatal(err)
			}
		}
		for _, tbl := range []string{"patients", "patients_plain"} {
			b.Run(mode.String()+"/"+tbl, func(b *testing.B) {
				b.ReportAllocs()
				var ssn, diag string
				for b.Loop() {
					if err := conn.QueryRow(ctx, "SELECT ssn, diagnosis FROM "+tbl+" WHERE id = $1", 95000).Scan(&ssn, &diag); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

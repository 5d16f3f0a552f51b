package phi

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
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

// BenchmarkWorkload runs bench/phi.sql's transaction (point select by id
// returning both PHI columns, lookup by the deterministic column, insert,
// update) through phiproxy, on the PHI table and on its plaintext twin, in
// prepared (cached statement) and simple-protocol mode. The proxy runs in
// this process, so allocs/op counts its allocations too: the difference
// between the two tables is what the PHI layer costs in allocations.
func BenchmarkWorkload(b *testing.B) {
	benchWorkload(b, startProxy(b), "patients", "patients_plain")
}

// BenchmarkAuditWorkload is BenchmarkWorkload on the PHI table with the
// audit trail in each mode (its CPU cost per transaction; the fsync
// latency under concurrency is bench/run.sh -audit's business).
func BenchmarkAuditWorkload(b *testing.B) {
	for _, mode := range []string{config.AuditOff, config.AuditBestEffort, config.AuditStrict} {
		b.Run("audit="+mode, func(b *testing.B) {
			cfg, dir := auditCfg(b, mode)
			benchWorkload(b, startAudited(b, cfg, dir), "patients")
		})
	}
}

func benchWorkload(b *testing.B, p *testProxy, tables ...string) {
	const rows = 1000
	ctx := context.Background()
	seed := connect(b, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	for _, tbl := range tables {
		for id := 1; id <= rows; id++ {
			if _, err := seed.Exec(ctx, "INSERT INTO "+tbl+" (id, ssn, diagnosis) VALUES ($1, $2::text, $3::text)",
				id, strconv.Itoa(100000000+id), "dx"+strconv.Itoa(id)); err != nil {
				b.Fatal(err)
			}
		}
	}
	workloads := map[string]*testenv.PHIWorkload{}
	for _, tbl := range tables {
		workloads[tbl] = testenv.NewPHIWorkload(tbl, rows)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		conn := connect(b, ctx, p.dsn(), mode)
		for _, tbl := range tables {
			b.Run(mode.String()+"/"+tbl, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := workloads[tbl].Run(ctx, conn); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkCopyIn streams COPY FROM STDIN (text) of two PHI columns
// through the proxy, and the same rows into the plaintext twin.
func BenchmarkCopyIn(b *testing.B) {
	ctx := context.Background()
	p := startProxy(b)
	conn := connect(b, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	var data bytes.Buffer
	for i := 1; i <= 50000; i++ {
		fmt.Fprintf(&data, "%d\t%d\tdiagnosis %d of a longer free-text note\n", i, 100000000+i, i)
	}
	for _, tbl := range []string{"patients", "patients_plain"} {
		b.Run(tbl, func(b *testing.B) {
			b.SetBytes(int64(data.Len()))
			for b.Loop() {
				if _, err := conn.Exec(ctx, "TRUNCATE "+tbl); err != nil {
					b.Fatal(err)
				}
				if _, err := conn.PgConn().CopyFrom(ctx, bytes.NewReader(data.Bytes()), "COPY "+tbl+" (id, ssn, diagnosis) FROM STDIN"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

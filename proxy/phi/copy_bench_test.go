package phi

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

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

package phi

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestFailedStatementOutcome: when phiproxy fails a statement the server
// already ran (here the safety net, on planted ciphertext), a client is
// never told its implicit transaction rolled back when the server
// committed something of it: the session ends with 08007 instead. When
// nothing was changed, or the server rolled back after all, or inside an
// explicit transaction, the session goes on (issue 11, item 19).
func TestFailedStatementOutcome(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	setup := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, setup, "INSERT INTO patients (id, ssn) VALUES (1, 'planted-ssn')")
	mustExec(t, ctx, direct, "INSERT INTO blobs (id, b) SELECT 7001, ssn FROM patients WHERE id = 1")
	const bad = "SELECT b FROM blobs WHERE id = 7001"
	insert := func(id int) string { return fmt.Sprintf("INSERT INTO blobs (id) VALUES (%d)", id) }

	simple := func(sql string) func(*pgx.Conn) []error {
		return func(c *pgx.Conn) []error {
			results, err := c.PgConn().Exec(ctx, sql).ReadAll()
			var errs []error
			for _, r := range results {
				if r.Err != nil {
					errs = append(errs, r.Err)
				}
			}
			return append(errs, err)
		}
	}
	batch := func(sqls ...string) func(*pgx.Conn) []error {
		return func(c *pgx.Conn) []error {
			b := &pgx.Batch{}
			for _, q := range sqls {
				b.Queue(q)
			}
			br := c.SendBatch(ctx, b)
			var errs []error
			for range sqls {
				_, err := br.Exec()
				errs = append(errs, err)
			}
			return append(errs, br.Close())
		}
	}
	for _, tc := range []struct {
		name     string
		mode     pgx.QueryExecMode
		run      func(*pgx.Conn) []error
		id       int
		inserted bool // what the server did with row id
		unknown  bool // the session must end with 08007
	}{
		{"an INSERT after the failed statement in one query string", pgx.QueryExecModeSimpleProtocol, simple(bad + "; " + insert(7101)), 7101, true, true},
		{"an INSERT before the failed statement in one query string", pgx.QueryExecModeSimpleProtocol, simple(insert(7102) + "; " + bad), 7102, true, true},
		{"the failed statement is INSERT … RETURNING", pgx.QueryExecModeSimpleProtocol, simple("INSERT INTO blobs (id, b) SELECT 7103, b FROM blobs WHERE id = 7001 RETURNING b"), 7103, true, true},
		{"the failed statement is INSERT … RETURNING, extended protocol", pgx.QueryExecModeCacheStatement, batch("INSERT INTO blobs (id, b) SELECT 7104, b FROM blobs WHERE id = 7001 RETURNING b"), 7104, true, true},
		{"a later statement fails in the server: all rolled back", pgx.QueryExecModeSimpleProtocol, simple(bad + "; " + insert(7105) + "; SELECT 1/0"), 7105, false, false},
		{"a batch with an INSERT after the failed statement", pgx.QueryExecModeCacheStatement, batch(bad, insert(7106)), 7106, true, true},
		{"a batch with an INSERT before the failed statement", pgx.QueryExecModeCacheStatement, batch(insert(7107), bad), 7107, true, true},
		{"a batch with only reads", pgx.QueryExecModeCacheStatement, batch(bad, "SELECT 1"), 0, false, false},
		{"only reads in one query string", pgx.QueryExecModeSimpleProtocol, simple(bad + "; SELECT 1"), 0, false, false},
		{"a COMMIT after the failed statement", pgx.QueryExecModeSimpleProtocol, simple(bad + "; COMMIT; " + insert(7110)), 7110, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), tc.mode)
			ended := strings.Count(p.logs.String(), `"sqlstate":"08007"`)
			errs := tc.run(conn)
			codes := map[string]bool{}
			for _, err := range errs {
				if err != nil {
					codes[sqlstate(err)] = true
				}
			}
			if conn.Ping(ctx) != nil && strings.Count(p.logs.String(), `"sqlstate":"08007"`) > ended {
				// pgx reports a batch's first error for all of it: the
				// FATAL that followed shows in the closed session and in
				// the proxy's log of it.
				codes["08007"] = true
			}
			if !codes["XX000"] {
				t.Fatalf("the safety net did not fail the statement: %v", errs)
			}
			if codes["08007"] != tc.unknown {
				t.Fatalf("08007 = %v, want %v: %v", codes["08007"], tc.unknown, errs)
			}
			if tc.id != 0 {
				var n int
				if err := direct.QueryRow(ctx, "SELECT count(*) FROM blobs WHERE id = $1", tc.id).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if (n == 1) != tc.inserted {
					t.Fatalf("row %d: %d rows, want inserted=%v", tc.id, n, tc.inserted)
				}
			}
			if tc.unknown {
				if err := conn.Ping(ctx); err == nil {
					t.Fatal("the session goes on after 08007")
				}
				return
			}
			stillWorks(t, ctx, conn)
		})
	}

	// Inside an explicit transaction the failure is made real upstream.
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	_, err := conn.PgConn().Exec(ctx, "BEGIN; "+bad+"; "+insert(7120)).ReadAll()
	expectCode(t, err, "XX000", "in an explicit transaction")
	if conn.PgConn().TxStatus() != 'E' {
		t.Fatalf("transaction status %c, want E", conn.PgConn().TxStatus())
	}
	mustExec(t, ctx, conn, "ROLLBACK")
	wantCount(t, ctx, direct, 0, "row of a rolled back transaction", "SELECT count(*) FROM blobs WHERE id = 7120")
	stillWorks(t, ctx, conn)
}

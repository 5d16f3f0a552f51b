package phi

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func mustExec(t *testing.T, ctx context.Context, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func expectCode(t *testing.T, err error, code, what string) {
	t.Helper()
	if sqlstate(err) != code {
		t.Fatalf("%s: got %v, want SQLSTATE %s", what, err, code)
	}
}

// stillWorks fails t unless c still answers a query on a PHI column of
// patients.
func stillWorks(t *testing.T, ctx context.Context, c *pgx.Conn) {
	t.Helper()
	stillAnswers(t, ctx, c, "SELECT count(*) FROM patients WHERE ssn = $1", "000-00-0000")
}

// wantCount fails t unless query, a count, gives want on c; what says
// what a wrong count means.
func wantCount(t *testing.T, ctx context.Context, c *pgx.Conn, want int, what, query string, args ...any) {
	t.Helper()
	var n int
	if err := c.QueryRow(ctx, query, args...).Scan(&n); err != nil || n != want {
		t.Fatalf("%s: %d %v", what, n, err)
	}
}

// stillAnswers fails t unless c answers query, a count, after a refusal.
func stillAnswers(t *testing.T, ctx context.Context, c *pgx.Conn, query string, args ...any) {
	t.Helper()
	var n int
	if err := c.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("session after a refusal: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	ctx, p := start(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), mode)
			// Outside a transaction: the refusal, then the session works.
			_, err := conn.Exec(ctx, "SELECT id FROM patients WHERE ssn > $1", "1")
			expectCode(t, err, "0A000", "range on a deterministic column")
			pe := pgError(err)
			if !strings.Contains(pe.Message, "public.patients.ssn") || pe.Hint == "" || pe.Where != "" {
				t.Fatalf("refusal should name the column, hint, and carry no context: %+v", pe)
			}
			stillWorks(t, ctx, conn)
			// A value that is not a date: 22007, no value in the message.
			_, err = conn.Exec(ctx, "INSERT INTO patients (id, dob) VALUES ($1, $2)", 7777, "31/12/1999")
			expectCode(t, err, "22007", "bad date")
			if strings.Contains(err.Error(), "31/12/1999") || !strings.Contains(err.Error(), "public.patients.dob") {
				t.Fatalf("error must name the column and not the value: %v", err)
			}
			stillWorks(t, ctx, conn)
			// Policy: default deny refuses reading the column, not writing it.
			_, err = conn.Exec(ctx, "SELECT id, secret FROM restricted")
			expectCode(t, err, "42501", "deny")
			if !strings.Contains(err.Error(), "public.restricted.secret") {
				t.Fatalf("deny must name the column: %v", err)
			}
			_, err = conn.Exec(ctx, "SELECT * FROM restricted")
			expectCode(t, err, "42501", "deny through *")
			mustExec(t, ctx, conn, "INSERT INTO restricted (id, secret, label) VALUES ($1, $2, 'x') ON CONFLICT (id) DO NOTHING", 1, "top secret")
			mustExec(t, ctx, conn, "SELECT id, label FROM restricted")
			stillWorks(t, ctx, conn)

			// Inside a transaction: the refusal fails it like a server error.
			mustExec(t, ctx, conn, "BEGIN")
			mustExec(t, ctx, conn, "INSERT INTO blobs (id) VALUES (424242)")
			_, err = conn.Exec(ctx, "SELECT id FROM patients ORDER BY ssn")
			expectCode(t, err, "0A000", "ORDER BY ssn")
			_, err = conn.Exec(ctx, "SELECT 1")
			expectCode(t, err, "25P02", "after a refusal in a transaction")
			mustExec(t, ctx, conn, "ROLLBACK")
			wantCount(t, ctx, conn, 0, "the transaction was not rolled back", "SELECT count(*) FROM blobs WHERE id = 424242")
			stillWorks(t, ctx, conn)

			// A bad parameter inside a transaction.
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, "UPDATE patients SET mrn = $1 WHERE id = 1", "12x")
			if mode == pgx.QueryExecModeSimpleProtocol || mode == pgx.QueryExecModeExec {
				expectCode(t, err, "22P02", "bad int8")
			} else if err == nil {
				t.Fatal("bad int8 accepted")
			}
			_, err = tx.Exec(ctx, "SELECT 1")
			expectCode(t, err, "25P02", "after a bad parameter in a transaction")
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			stillWorks(t, ctx, conn)
		})
	}
}

func TestRefusalInMultiStatementQuery(t *testing.T) {
	ctx, conn := proxied(t, pgx.QueryExecModeSimpleProtocol)
	// The statements before the refused one run in the implicit
	// transaction and are rolled back, as with a server error.
	_, err := conn.PgConn().Exec(ctx, "INSERT INTO blobs (id) VALUES (515151); SELECT ssn FROM patients ORDER BY ssn; INSERT INTO blobs (id) VALUES (515152)").ReadAll()
	expectCode(t, err, "0A000", "refused second statement")
	wantCount(t, ctx, conn, 0, "statements around the refusal took effect", "SELECT count(*) FROM blobs WHERE id IN (515151, 515152)")
	// A refused literal in a later statement of an explicit transaction.
	_, err = conn.PgConn().Exec(ctx, "BEGIN; INSERT INTO blobs (id) VALUES (515153); INSERT INTO patients (id, dob) VALUES (515153, 'never')").ReadAll()
	expectCode(t, err, "22007", "bad date literal")
	if conn.PgConn().TxStatus() != 'E' {
		t.Fatalf("transaction status %c, want E", conn.PgConn().TxStatus())
	}
	mustExec(t, ctx, conn, "ROLLBACK")
	stillWorks(t, ctx, conn)
}

func TestSafetyNet(t *testing.T) {
	ctx, p := start(t)
	direct, setup := p.direct(pgx.QueryExecModeSimpleProtocol), p.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, setup, "INSERT INTO patients (id, ssn) VALUES (31337, $1)", "planted-ssn")
	// Plant a ciphertext in a column phiproxy does not know as PHI, as
	// bytea and as text.
	mustExec(t, ctx, direct, "INSERT INTO blobs (id, b, t) SELECT 31337, ssn, NULL FROM patients WHERE id = 31337")
	mustExec(t, ctx, direct, "INSERT INTO blobs (id, b, t) SELECT 31338, NULL, ssn::text FROM patients WHERE id = 31337")
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), mode)
			for _, q := range []string{
				"SELECT id, b FROM blobs WHERE id = 31337",
				"SELECT id, t FROM blobs WHERE id = 31338",
				"SELECT b FROM blobs WHERE id >= 31337 ORDER BY id",
			} {
				rows, err := conn.Query(ctx, q)
				if err == nil {
					for rows.Next() {
					}
					err = rows.Err()
				}
				expectCode(t, err, "XX000", q)
				stillWorks(t, ctx, conn)
			}
			// In a transaction the failure fails the transaction.
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, "SELECT b FROM blobs WHERE id = 31337")
			expectCode(t, err, "XX000", "planted ciphertext in a transaction")
			_, err = tx.Exec(ctx, "SELECT 1")
			expectCode(t, err, "25P02", "after the safety net in a transaction")
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			stillWorks(t, ctx, conn)
		})
	}
	if strings.Contains(p.logs.String(), "planted-ssn") {
		t.Fatal("a value reached the log")
	}
}

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
	// Other tests' functions over PHI may exist too (-count, -shuffle).
	var names []string
	for _, f := range p.phi.cur.Load().cat.Functions() {
		names = append(names, f.Name)
	}
	if !slices.Contains(names, "fn_count_patients") || slices.Contains(names, "fn_plain") {
		t.Fatalf("catalog functions touching PHI: %v, want fn_count_patients and not fn_plain", names)
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

// TestFailedStatementOutcome: when phiproxy fails a statement the server
// already ran (here the safety net, on planted ciphertext), a client is
// never told its implicit transaction rolled back when the server
// committed something of it: the session ends with 08007 instead. When
// nothing was changed, or the server rolled back after all, or inside an
// explicit transaction, the session goes on (issue 11, item 19).
func TestFailedStatementOutcome(t *testing.T) {
	ctx, p := start(t)
	direct, setup := p.direct(pgx.QueryExecModeSimpleProtocol), p.via(pgx.QueryExecModeSimpleProtocol)
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
	conn := p.via(pgx.QueryExecModeSimpleProtocol)
	_, err := conn.PgConn().Exec(ctx, "BEGIN; "+bad+"; "+insert(7120)).ReadAll()
	expectCode(t, err, "XX000", "in an explicit transaction")
	if conn.PgConn().TxStatus() != 'E' {
		t.Fatalf("transaction status %c, want E", conn.PgConn().TxStatus())
	}
	mustExec(t, ctx, conn, "ROLLBACK")
	wantCount(t, ctx, direct, 0, "row of a rolled back transaction", "SELECT count(*) FROM blobs WHERE id = 7120")
	stillWorks(t, ctx, conn)
}

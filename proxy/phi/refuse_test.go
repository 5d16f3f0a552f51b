package phi

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	ctx := testCtx(t)
	p := startProxy(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), mode)
			// Outside a transaction: the refusal, then the session works.
			_, err := conn.Exec(ctx, "SELECT id FROM patients WHERE ssn > $1", "1")
			expectCode(t, err, "0A000", "range on a deterministic column")
			var pe *pgconn.PgError
			asPgErr(err, &pe)
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
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	setup := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
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

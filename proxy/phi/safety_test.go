package phi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
)

// readAll runs q and returns every value the client received, and the
// error.
func readAll(ctx context.Context, c *pgx.Conn, q string, args ...any) ([][]byte, error) {
	rows, err := c.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	var vals [][]byte
	for rows.Next() {
		for _, v := range rows.RawValues() {
			vals = append(vals, append([]byte(nil), v...))
		}
	}
	return vals, rows.Err()
}

// ssnKeyID is the primary key id of the ssn column's keyset.
func ssnKeyID(t *testing.T) uint32 {
	c, err := testKeys(t).Cipher("public.patients.ssn")
	if err != nil {
		t.Fatal(err)
	}
	return c.PrimaryKeyID()
}

// TestSafetyNetInnocentValues: values that merely look like the start of
// an envelope (issue 11, item 20) pass, in every protocol mode and in
// COPY output.
func TestSafetyNetInnocentValues(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	id := ssnKeyID(t)
	idHex := fmt.Sprintf("%08x", id)
	prefix := uint64(0x50480101)<<32 | uint64(id) // "PH\x01\x01" + a loaded key id
	queries := []struct {
		q    string
		args []any
	}{
		{"SELECT g::int4 FROM generate_series(1346896128, 1346896383) g", nil},
		{fmt.Sprintf("SELECT %d::int8", int64(prefix)), nil},
		{"SELECT $1::float4", []any{math.Float32frombits(0x50480101)}},
		{"SELECT $1::float8", []any{math.Float64frombits(prefix)}},
		{"SELECT '50480101-" + idHex[:4] + "-" + idHex[4:] + "-0000-000000000000'::uuid", nil},
		{"SELECT ('504801' || lpad(to_hex(g), 26, '0'))::uuid FROM generate_series(1, 2000) g", nil},
		{"SELECT ('504801' || '01' || repeat('1', 60))::numeric", nil},
		{`SELECT '\x504801'::bytea, 'PH' || chr(1), '\x504801'::text, 'part number X5048012'`, nil},
		{`SELECT ('\x50480101` + idHex + `00')::bytea`, nil}, // a loaded key id, but shorter than any envelope
		{`SELECT '\x504801'::bytea || decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g`, nil},
		{`SELECT ARRAY['\x504801'::bytea], ROW('PH' || chr(1), '\x504801'::bytea)`, nil},
	}
	bulk := []string{
		"SELECT gen_random_uuid() FROM generate_series(1, 200000)",
		"SELECT decode(md5(g::text) || md5((-g)::text), 'hex') FROM generate_series(1, 100000) g",
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), mode)
			for _, q := range queries {
				if _, err := readAll(ctx, conn, q.q, q.args...); err != nil {
					t.Errorf("%s: %v", q.q, err)
				}
			}
			if mode == pgx.QueryExecModeExec {
				return
			}
			for _, q := range bulk {
				if _, err := readAll(ctx, conn, q); err != nil {
					t.Errorf("%s: %v", q, err)
				}
			}
		})
	}

	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, conn, `INSERT INTO patients (id, name, ssn) VALUES (1, 'part number X5048012 PH'||chr(1)||' \x504801', '123-45-6789')`)
	innocent := `SELECT 'part number X5048012', '\x504801'::bytea, 'PH' || chr(1), '\x504801'::text, ('\x50480101` + idHex + `00')::bytea`
	for _, q := range []string{
		"COPY (" + innocent + ") TO STDOUT",
		"COPY (" + innocent + ") TO STDOUT (FORMAT csv)",
		"COPY (" + innocent + ") TO STDOUT (FORMAT binary)",
		"COPY (SELECT id, name, ssn FROM patients) TO STDOUT",
		"COPY (SELECT id, name, ssn FROM patients) TO STDOUT (FORMAT csv, HEADER)",
		"COPY (SELECT id, name, ssn FROM patients) TO STDOUT (FORMAT binary)",
		// A few MiB of random binary data.
		"COPY (SELECT decode(string_agg(md5(g::text), ''), 'hex') FROM generate_series(1, 200000) g) TO STDOUT (FORMAT binary)",
		"COPY (SELECT decode(md5(g::text) || md5((-g)::text), 'hex') FROM generate_series(1, 100000) g) TO STDOUT",
	} {
		var buf bytes.Buffer
		if _, err := conn.PgConn().CopyTo(ctx, &buf, q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	if _, err := readAll(ctx, conn, "SELECT name, ssn FROM patients"); err != nil {
		t.Fatal(err)
	}
}

// dynSQL reads the ssn ciphertext through a function the planner cannot
// see into (issue 11, item 10).
const dynSQL = "dyn(concat('select ssn from pat','ients'))"

func makeDyn(t *testing.T, ctx context.Context, direct *pgx.Conn) {
	mustExec(t, ctx, direct, "CREATE OR REPLACE FUNCTION dyn(q text) RETURNS SETOF bytea LANGUAGE plpgsql AS $$BEGIN RETURN QUERY EXECUTE q; END$$")
}

// TestSafetyNetEnvelopeForms: an envelope read around the planner fails
// the statement in every form it can take on the way out, whatever
// bytea_output says, in rows and in COPY; in a notification it is
// redacted.
func TestSafetyNetEnvelopeForms(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	rec := testKeys(t).Recognizer()
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	makeDyn(t, ctx, direct)
	setup := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, setup, "INSERT INTO patients (id, ssn) VALUES (1, '123-45-6789')")
	selects := []string{
		"SELECT * FROM " + dynSQL,
		"SELECT x::text FROM " + dynSQL + " x",
		"SELECT ARRAY[x] FROM " + dynSQL + " x",
		"SELECT ROW(1, x) FROM " + dynSQL + " x",
		"SELECT ROW(ARRAY[x]) FROM " + dynSQL + " x",
		"SELECT encode(x, 'hex') FROM " + dynSQL + " x",
		"SELECT upper(encode(x, 'hex')) FROM " + dynSQL + " x",
		"SELECT encode(x, 'base64') FROM " + dynSQL + " x",
		"SELECT encode(x, 'escape') FROM " + dynSQL + " x",
		"SELECT to_json(x) FROM " + dynSQL + " x",
		"SELECT 'abc'::bytea || x FROM " + dynSQL + " x",
	}
	copies := []string{
		"COPY (SELECT * FROM " + dynSQL + ") TO STDOUT",
		"COPY (SELECT * FROM " + dynSQL + ") TO STDOUT (FORMAT csv)",
		"COPY (SELECT * FROM " + dynSQL + ") TO STDOUT (FORMAT binary)",
		"COPY (SELECT 1, ARRAY[x], ROW(x) FROM " + dynSQL + " x) TO STDOUT",
		"COPY (SELECT 1, ARRAY[x], ROW(x) FROM " + dynSQL + " x) TO STDOUT WITH CSV DELIMITER ';'",
		"COPY (SELECT 1, ARRAY[x], ROW(x) FROM " + dynSQL + " x) TO STDOUT (FORMAT binary)",
		"COPY (SELECT id, ssn, x FROM patients, " + dynSQL + " x) TO STDOUT",
		"COPY (SELECT id, ssn, x FROM patients, " + dynSQL + " x) TO STDOUT (FORMAT binary)",
	}
	for _, output := range []string{"hex", "escape"} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
			t.Run(output+"/"+mode.String(), func(t *testing.T) {
				conn := connect(t, ctx, p.dsn("bytea_output="+output), mode)
				for _, q := range selects {
					vals, err := readAll(ctx, conn, q)
					expectCode(t, err, "XX000", q)
					for _, v := range vals {
						if rec.Contains(v) {
							t.Fatalf("%s: ciphertext reached the client: %q", q, v)
						}
					}
					stillWorks(t, ctx, conn)
				}
				for _, q := range copies {
					var buf bytes.Buffer
					_, err := conn.PgConn().CopyTo(ctx, &buf, q)
					expectCode(t, err, "XX000", q)
					if rec.Contains(buf.Bytes()) {
						t.Fatalf("%s: ciphertext reached the client", q)
					}
					stillWorks(t, ctx, conn)
				}
			})
		}
	}

	// NOTIFY: the payload reaches the listener with the envelope redacted.
	listener := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, listener, "LISTEN safety")
	for _, payload := range []string{"encode(x, 'hex')", "'before ' || x::text || ' after'", "encode(x, 'escape')", "encode(x, 'base64')"} {
		mustExec(t, ctx, setup, "SELECT pg_notify('safety', "+payload+") FROM "+dynSQL+" x")
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Contains([]byte(n.Payload)) || !strings.Contains(n.Payload, crypto.EnvelopeRedacted) {
			t.Fatalf("notification payload %s: %q", payload, n.Payload)
		}
	}
	// A reported setting.
	_, err := readAll(ctx, setup, "SELECT set_config('application_name', encode(x, 'hex'), false) FROM "+dynSQL+" x")
	expectCode(t, err, "XX000", "set_config")
	if v := setup.PgConn().ParameterStatus("application_name"); rec.Contains([]byte(v)) || v != crypto.EnvelopeRedacted {
		t.Fatalf("application_name reported as %q", v)
	}
	if strings.Contains(p.logs.String(), "123-45-6789") {
		t.Fatal("a value reached the log")
	}
}

// TestServerErrorsRedacted: a server error or notice that prints a
// ciphertext (a unique violation's key, a CHECK or NOT NULL violation's
// failing row) reaches the client with "<encrypted>" in its place (issue
// 11, item 13).
func TestServerErrorsRedacted(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	makeDyn(t, ctx, direct)
	mustExec(t, ctx, direct, "CREATE UNIQUE INDEX safety_ssn_unique ON patients (ssn)")
	mustExec(t, ctx, direct, "ALTER TABLE patients ADD CONSTRAINT safety_id_check CHECK (id <> 424242) NOT VALID")
	mustExec(t, ctx, direct, "ALTER TABLE visits ALTER note SET NOT NULL")
	t.Cleanup(func() {
		ctx := context.Background()
		for _, q := range []string{"DROP INDEX IF EXISTS safety_ssn_unique", "ALTER TABLE patients DROP CONSTRAINT IF EXISTS safety_id_check", "ALTER TABLE visits ALTER note DROP NOT NULL"} {
			if _, err := direct.Exec(ctx, q); err != nil {
				t.Error(err)
			}
		}
	})
	rec := testKeys(t).Recognizer()
	check := func(t *testing.T, err error, code, what, plaintext string) {
		t.Helper()
		expectCode(t, err, code, what)
		var pe *pgconn.PgError
		errors.As(err, &pe)
		for _, f := range []string{pe.Message, pe.Detail, pe.Hint, pe.Where} {
			if rec.Contains([]byte(f)) || strings.Contains(f, `\x5048`) || strings.Contains(f, `PH\`) || strings.Contains(f, plaintext) {
				t.Fatalf("%s: the error shows ciphertext or plaintext: %q", what, f)
			}
		}
		if !strings.Contains(pe.Detail, crypto.EnvelopeRedacted) {
			t.Fatalf("%s: DETAIL %q, want the key redacted", what, pe.Detail)
		}
	}
	n := 0
	for _, output := range []string{"hex", "escape"} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			t.Run(output+"/"+mode.String(), func(t *testing.T) {
				conn := connect(t, ctx, p.dsn("bytea_output="+output), mode)
				n++
				ssn := fmt.Sprintf("dup-%d-6789", n)
				mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 1000+n, ssn)
				_, err := conn.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 2000+n, ssn)
				check(t, err, "23505", "unique violation", ssn)
				_, err = conn.Exec(ctx, "INSERT INTO patients (id, ssn, diagnosis) VALUES (424242, $1, $2)", "chk-"+ssn, "secret diagnosis")
				check(t, err, "23514", "check violation", "secret diagnosis")
				_, err = conn.Exec(ctx, "INSERT INTO visits (id, patient_ssn) VALUES ($1, $2)", 3000+n, "nn-"+ssn)
				check(t, err, "23502", "not null violation", "nn-"+ssn)
				stillWorks(t, ctx, conn)
			})
		}
	}
	// A notice that prints a ciphertext.
	var notices []*pgconn.Notice
	conn := connectWith(t, ctx, p.dsn(), func(cc *pgx.ConnConfig) {
		cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n) }
	})
	mustExec(t, ctx, conn, "DO $$DECLARE v bytea; BEGIN SELECT x INTO v FROM "+dynSQL+" x LIMIT 1; RAISE NOTICE 'value %', v USING DETAIL = v::text; END$$")
	if len(notices) != 1 || notices[0].Message != "value "+crypto.EnvelopeRedacted || notices[0].Detail != crypto.EnvelopeRedacted {
		t.Fatalf("notices: %+v", notices)
	}
	// Ciphertext in hex starts x504801 (a bare "5048" can be a logged
	// backend_pid).
	if logs := p.logs.String(); strings.Contains(logs, "dup-") || strings.Contains(strings.ToLower(logs), "x504801") {
		t.Fatal("a value reached the log")
	}
}

func connectWith(t *testing.T, ctx context.Context, dsn string, f func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	return testenv.Connect(t, ctx, dsn, f)
}

// TestNoBugTextReachesClient: what a user can type never gets phiproxy's
// "BUG:" texts back (issue 11, item 13).
func TestNoBugTextReachesClient(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		conn := connect(t, ctx, p.dsn(), mode)
		for _, q := range []string{
			"SELECT id FROM patients WHERE mrn = -(-1000000)",
			"INSERT INTO patients (id, mrn) VALUES (1, -(-1000000))",
		} {
			_, err := readAll(ctx, conn, q)
			if err != nil && strings.Contains(err.Error(), "BUG") {
				t.Fatalf("%s: %v", q, err)
			}
			stillWorks(t, ctx, conn)
		}
	}
}

// TestSafetyNetFunctionCall: the fast-path FunctionCall protocol gets no
// ciphertext either.
func TestSafetyNetFunctionCall(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, "CREATE OR REPLACE FUNCTION first_ssn() RETURNS bytea LANGUAGE sql AS $$SELECT ssn FROM patients LIMIT 1$$")
	t.Cleanup(func() { _, _ = direct.Exec(context.Background(), "DROP FUNCTION IF EXISTS first_ssn()") })
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES (1, '123-45-6789')")
	var oid uint32
	if err := conn.QueryRow(ctx, "SELECT 'first_ssn'::regproc::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	rec := testKeys(t).Recognizer()
	for _, format := range []uint16{0, 1} {
		code := ""
		testenv.Exchange(t, conn.PgConn().Frontend(), func(msg pgproto3.BackendMessage) {
			switch m := msg.(type) {
			case *pgproto3.FunctionCallResponse:
				if rec.Contains(m.Result) {
					t.Fatalf("format %d: ciphertext reached the client", format)
				}
			case *pgproto3.ErrorResponse:
				code = m.Code
			}
		}, &pgproto3.FunctionCall{Function: oid, ResultFormatCode: format})
		if code != "XX000" {
			t.Fatalf("format %d: got SQLSTATE %q, want XX000", format, code)
		}
	}
	stillWorks(t, ctx, conn)
}

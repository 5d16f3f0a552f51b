package phi

import (
	"context"
	"fmt"
	"github.com/phiproxy/phiproxy/policy"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/config"
)

// Server-side cursors (issue 17, item 2): DECLARE over PHI, then FETCH,
// MOVE and CLOSE by name, as Django's QuerySet.iterator(), psycopg named
// cursors and SQLAlchemy's stream_results send them; compared with the
// same statements on the plaintext twin, in every pgx mode (FETCH through
// the simple protocol and through Parse/Bind/Describe/Execute).

// cursorFixture inserts five rows on both sides (ids base+1..base+5).
func cursorFixture(t *testing.T, via, direct *pgx.Conn, base int) {
	t.Helper()
	ormFixture(t, via, direct, base)
}

// cursorTwins is simpleTwins with cursorFixture's rows on both sides.
func cursorTwins(t *testing.T) (ctx context.Context, via, direct *pgx.Conn) {
	t.Helper()
	ctx, via, direct = simpleTwins(t)
	cursorFixture(t, via, direct, 0)
	return ctx, via, direct
}

// fetchAll fetches c n rows at a time on both sides until it is empty and
// returns every row read through phiproxy.
func fetchAll(t *testing.T, via, direct *pgx.Conn, cursor string, n int) [][]string {
	t.Helper()
	var all [][]string
	for i := 0; i < 20; i++ {
		got := twin(t, via, direct, fmt.Sprintf("FETCH FORWARD %d FROM %s", n, cursor))
		if len(got) == 0 {
			return all
		}
		all = append(all, got...)
	}
	t.Fatalf("cursor %s never ran out of rows", cursor)
	return nil
}

// expectNotDecrypted opens cursor name over patients' ssn ciphertext in
// a way phiproxy cannot see (a DO block running dynamic SQL: the text
// names no PHI relation), inside the open transaction, and fetches from
// it: the ciphertext must fail (XX000), never come out as plaintext
// decrypted with the plan of an older cursor of the same name.
func expectNotDecrypted(t *testing.T, ctx context.Context, via *pgx.Conn, name string) {
	t.Helper()
	mustExec(t, ctx, via, "DO $$DECLARE r refcursor := '"+name+"'; BEGIN OPEN r FOR EXECUTE concat('SELECT id, ssn FROM pat', 'ients ORDER BY id'); END$$")
	rows, err := via.Query(ctx, "FETCH 1 FROM "+name)
	if err == nil {
		var vals [][]any
		for rows.Next() {
			v, _ := rows.Values()
			vals = append(vals, v)
		}
		err = rows.Err()
		if err == nil {
			t.Fatalf("FETCH of a cursor phiproxy does not know returned %v", vals)
		}
	}
	expectCode(t, err, "XX000", "FETCH of a cursor phiproxy does not know")
}

// expectForgotten checks that phiproxy no longer decrypts cursor name:
// the server has no such cursor (34000, what), and one opened behind
// phiproxy's back is guarded.
func expectForgotten(t *testing.T, ctx context.Context, via *pgx.Conn, name, what string) {
	t.Helper()
	_, err := via.Exec(ctx, "FETCH 1 FROM "+name)
	expectCode(t, err, "34000", what)
	mustExec(t, ctx, via, "BEGIN")
	expectNotDecrypted(t, ctx, via, name)
	mustExec(t, ctx, via, "ROLLBACK")
}

// TestCursorDjangoIterator: QuerySet.iterator() in autocommit, as
// psycopg2 sends it: a WITH HOLD cursor declared outside a transaction,
// fetched 2000 (here 2) rows at a time, then closed.
func TestCursorDjangoIterator(t *testing.T) {
	ctx, p := start(t)
	fixtureModes(t, p, cursorFixture, func(t *testing.T, _ int, via, direct *pgx.Conn, base int) {
		name := `"_django_curs_140_sync_1"`
		twin(t, via, direct, `DECLARE `+name+` NO SCROLL CURSOR WITH HOLD FOR SELECT id, ssn, diagnosis, dob, mrn FROM %[1]s WHERE id > `+fmt.Sprint(base)+` AND id < `+fmt.Sprint(base+100)+` ORDER BY id`)
		rows := fetchAll(t, via, direct, name, 2)
		if len(rows) != 5 || rows[0][1] != "111-11-1111" || rows[0][2] != "flu" {
			t.Fatalf("rows: %v", rows)
		}
		twin(t, via, direct, "CLOSE "+name)
		// A literal bound for a PHI column in the cursor's query is
		// encrypted; psycopg 3 sends the value as a parameter.
		twin(t, via, direct, `DECLARE c CURSOR WITH HOLD FOR SELECT id, ssn FROM %[1]s WHERE ssn = '111-11-1111' AND id > `+fmt.Sprint(base)+` ORDER BY id`)
		if got := fetchAll(t, via, direct, "c", 1); len(got) != 2 {
			t.Fatalf("rows: %v", got)
		}
		twin(t, via, direct, "CLOSE c")
		twin(t, via, direct, `DECLARE c CURSOR WITH HOLD FOR SELECT id, ssn FROM %[1]s WHERE ssn = $1 AND id > $2 ORDER BY id`, "222-22-2222", base)
		if got := fetchAll(t, via, direct, "c", 2); len(got) != 1 || got[0][1] != "222-22-2222" {
			t.Fatalf("rows: %v", got)
		}
		twin(t, via, direct, "CLOSE c")
		_, err := via.Exec(ctx, "CLOSE c")
		expectCode(t, err, "34000", "CLOSE of a closed cursor")
	})
}

// TestCursorInTransaction: a cursor without WITH HOLD inside BEGIN …
// COMMIT, with FETCH, MOVE, FETCH ALL and a scrollable FETCH; it is gone
// after the COMMIT, and a cursor of the same name phiproxy did not see
// declared is not decrypted with the old one's plan.
func TestCursorInTransaction(t *testing.T) {
	ctx, p := start(t)
	fixtureModes(t, p, cursorFixture, func(t *testing.T, _ int, via, direct *pgx.Conn, base int) {
		for _, c := range []*pgx.Conn{via, direct} {
			mustExec(t, ctx, c, "BEGIN")
		}
		twin(t, via, direct, `DECLARE c SCROLL CURSOR FOR SELECT name, ssn, diagnosis, dob FROM %[1]s WHERE id > `+fmt.Sprint(base)+` ORDER BY id`)
		twin(t, via, direct, "FETCH 2 FROM c")
		twin(t, via, direct, "MOVE FORWARD 1 IN c")
		twin(t, via, direct, "FETCH NEXT FROM c")
		twin(t, via, direct, "FETCH PRIOR FROM c")
		twin(t, via, direct, "MOVE ABSOLUTE 0 IN c")
		if got := twin(t, via, direct, "FETCH ALL IN c"); len(got) != 5 {
			t.Fatalf("FETCH ALL: %v", got)
		}
		for _, c := range []*pgx.Conn{via, direct} {
			mustExec(t, ctx, c, "COMMIT")
		}
		expectForgotten(t, ctx, via, "c", "FETCH after COMMIT of a cursor without HOLD")
	})
}

// TestCursorWithHold: a WITH HOLD cursor survives the COMMIT of its
// transaction and a later ROLLBACK, but not the ROLLBACK of the
// transaction (or savepoint) that declared it, nor CLOSE ALL or DISCARD
// ALL.
func TestCursorWithHold(t *testing.T) {
	ctx, p := start(t)
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
	both := func(t *testing.T, via *pgx.Conn, sqls ...string) {
		t.Helper()
		for _, sql := range sqls {
			for _, c := range []*pgx.Conn{via, direct} {
				mustExec(t, ctx, c, sql)
			}
		}
	}
	declare := func(t *testing.T, via *pgx.Conn, base int) {
		t.Helper()
		twin(t, via, direct, `DECLARE h CURSOR WITH HOLD FOR SELECT id, ssn, mrn FROM %[1]s WHERE id > `+fmt.Sprint(base)+` ORDER BY id`)
	}
	gone := func(t *testing.T, via *pgx.Conn) {
		t.Helper()
		expectForgotten(t, ctx, via, "h", "FETCH of a dropped cursor")
	}
	for mi, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			via := connect(t, ctx, p.dsn(), mode)
			base := 1000 * (mi + 1)
			cursorFixture(t, via, direct, base)

			both(t, via, "BEGIN")
			declare(t, via, base)
			twin(t, via, direct, "FETCH 1 FROM h")
			both(t, via, "COMMIT")
			twin(t, via, direct, "FETCH 1 FROM h")
			both(t, via, "BEGIN")
			twin(t, via, direct, "FETCH 1 FROM h")
			both(t, via, "ROLLBACK")
			if got := twin(t, via, direct, "FETCH ALL FROM h"); len(got) == 0 {
				t.Fatal("the held cursor lost its rows")
			}
			both(t, via, "CLOSE h")

			both(t, via, "BEGIN")
			declare(t, via, base)
			twin(t, via, direct, "FETCH 1 FROM h")
			both(t, via, "ROLLBACK")
			gone(t, via)

			both(t, via, "BEGIN", "SAVEPOINT s1")
			declare(t, via, base)
			both(t, via, "ROLLBACK TO SAVEPOINT s1", "COMMIT")
			gone(t, via)

			both(t, via, "BEGIN", "SAVEPOINT s1")
			declare(t, via, base)
			both(t, via, "RELEASE SAVEPOINT s1", "COMMIT")
			twin(t, via, direct, "FETCH 2 FROM h")
			both(t, via, "CLOSE ALL")
			gone(t, via)

			declare(t, via, base)
			twin(t, via, direct, "FETCH 2 FROM h")
			both(t, via, "DISCARD ALL")
			gone(t, via)
		})
	}
}

// results runs sql with the simple protocol and returns each statement's
// result: format codes and rows, values as raw bytes turned to strings.
func results(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) ([][]int16, [][][]string, error) {
	t.Helper()
	rs, err := c.PgConn().Exec(ctx, sql).ReadAll()
	var formats [][]int16
	var rows [][][]string
	for _, r := range rs {
		var f []int16
		for _, fd := range r.FieldDescriptions {
			f = append(f, fd.Format)
		}
		var rr [][]string
		for _, row := range r.Rows {
			var vals []string
			for _, v := range row {
				vals = append(vals, string(v))
			}
			rr = append(rr, vals)
		}
		formats, rows = append(formats, f), append(rows, rr)
	}
	return formats, rows, err
}

// twinResults runs a multi-statement string (%[1]s for the patients
// table) on both sides with the simple protocol and fails unless every
// result, formats and bytes, agrees; it returns the rows read through
// phiproxy.
func twinResults(t *testing.T, via, direct *pgx.Conn, sql string) ([][]int16, [][][]string) {
	t.Helper()
	ctx := testCtx(t)
	f1, r1, err := results(t, ctx, via, fmt.Sprintf(sql, "patients"))
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	f2, r2, err := results(t, ctx, direct, fmt.Sprintf(sql, "patients_plain"))
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if !reflect.DeepEqual(f1, f2) || !reflect.DeepEqual(r1, r2) {
		t.Fatalf("%s\nthrough phiproxy: %v %q\ndirect:           %v %q", sql, f1, r1, f2, r2)
	}
	return f1, r1
}

// TestCursorBinary: DECLARE … BINARY: a simple-protocol FETCH returns the
// rows in binary, so PHI values are decrypted into their logical type's
// binary form (compared byte for byte with the twin's).
func TestCursorBinary(t *testing.T) {
	_, via, direct := cursorTwins(t)
	formats, rows := twinResults(t, via, direct, `BEGIN; DECLARE b BINARY CURSOR FOR SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s ORDER BY id; FETCH 2 FROM b; MOVE 1 IN b; FETCH ALL FROM b; COMMIT`)
	if !reflect.DeepEqual(formats[2], []int16{1, 1, 1, 1, 1, 1}) || len(rows[2]) != 2 || rows[2][1][2] != "222-22-2222" || len(rows[4]) != 2 {
		t.Fatalf("formats %v rows %q", formats, rows)
	}
}

// TestCursorOneString: DECLARE and FETCH in one query string (an implicit
// transaction block), and a FETCH of a cursor the string closed before.
func TestCursorOneString(t *testing.T) {
	ctx, via, direct := cursorTwins(t)
	_, rows := twinResults(t, via, direct, `DECLARE c CURSOR FOR SELECT id, ssn, dob FROM %[1]s ORDER BY id; MOVE 1 IN c; FETCH 2 FROM c`)
	if len(rows[2]) != 2 || rows[2][0][1] != "222-22-2222" || rows[2][0][2] != "1975-12-31" {
		t.Fatalf("rows: %q", rows)
	}
	_, _, err := results(t, ctx, via, `DECLARE c CURSOR FOR SELECT id, ssn FROM patients; CLOSE c; FETCH 2 FROM c`)
	expectCode(t, err, "34000", "FETCH of a cursor closed earlier in the string")
	// Not closed by this string, but by the end of the last one's
	// implicit transaction.
	_, _, err = results(t, ctx, via, `FETCH 2 FROM c`)
	expectCode(t, err, "34000", "FETCH of a cursor of an earlier implicit transaction")
}

// TestCursorFetchBoundAtExecute: a FETCH prepared while its cursor had
// one shape runs, after CLOSE and a new DECLARE of the name, on the new
// cursor: PostgreSQL finds the cursor when the FETCH executes, and so
// must the decryption (Parse, Bind and Execute of the prepared FETCH).
func TestCursorFetchBoundAtExecute(t *testing.T) {
	ctx, via, _ := cursorTwins(t)
	pc := via.PgConn()
	mustExec(t, ctx, via, "BEGIN")
	mustExec(t, ctx, via, "DECLARE c CURSOR FOR SELECT ssn, id FROM patients ORDER BY id")
	if _, err := pc.Prepare(ctx, "f", "FETCH 1 FROM c", nil); err != nil {
		t.Fatal(err)
	}
	first := pc.ExecPrepared(ctx, "f", nil, nil, nil).Read()
	if first.Err != nil || len(first.Rows) != 1 || string(first.Rows[0][0]) != "111-11-1111" {
		t.Fatalf("first cursor: %v %q", first.Err, first.Rows)
	}
	mustExec(t, ctx, via, "CLOSE c")
	mustExec(t, ctx, via, "DECLARE c CURSOR FOR SELECT id, diagnosis, ssn FROM patients ORDER BY id")
	r := pc.ExecPrepared(ctx, "f", nil, nil, []int16{0, 0, 1}).Read()
	if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][1]) != "flu" || string(r.Rows[0][2]) != "111-11-1111" {
		t.Fatalf("second cursor: %v %q", r.Err, r.Rows)
	}
	mustExec(t, ctx, via, "COMMIT")
	r = pc.ExecPrepared(ctx, "f", nil, nil, nil).Read()
	expectCode(t, r.Err, "34000", "the prepared FETCH after COMMIT")
}

// syncOne sends msg and a Sync on via's connection and reads up to
// ReadyForQuery, handing each message to seen (when not nil); an
// ErrorResponse fails the test, naming what.
func syncOne(t *testing.T, via *pgx.Conn, msg pgproto3.FrontendMessage, what string, seen func(pgproto3.BackendMessage)) {
	t.Helper()
	fe := via.PgConn().Frontend()
	fe.Send(msg)
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if seen != nil {
			seen(msg)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s %s", what, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			done = true
		}
	}
}

// TestCursorDescribePortal: psycopg 3 describes its server-side cursor
// with an extended-protocol Describe of the portal the DECLARE created
// (cursors and portals share one namespace): PHI columns are described
// with their logical types.
func TestCursorDescribePortal(t *testing.T) {
	ctx, via := proxied(t, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, via, "BEGIN")
	mustExec(t, ctx, via, "DECLARE c CURSOR FOR SELECT id, ssn, dob, mrn FROM patients")
	var oids []uint32
	syncOne(t, via, &pgproto3.Describe{ObjectType: 'P', Name: "c"}, "Describe of the cursor", func(msg pgproto3.BackendMessage) {
		if m, ok := msg.(*pgproto3.RowDescription); ok {
			for _, f := range m.Fields {
				oids = append(oids, f.DataTypeOID)
			}
		}
	})
	if !reflect.DeepEqual(oids, []uint32{23, 25, 1082, 20}) {
		t.Fatalf("cursor described with type OIDs %v", oids)
	}
	mustExec(t, ctx, via, "COMMIT")
}

// TestCursorRefused: DECLARE over what a SELECT may not do on ciphertext
// is refused as the SELECT is; over a column the policy denies, 42501;
// a FETCH whose PHI dates the session's DateStyle would print in a form
// phiproxy does not write is refused (0A000). The session goes on.
func TestCursorRefused(t *testing.T) {
	ctx, p := start(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			via := connect(t, ctx, p.dsn(), mode)
			query := func(sql string) error {
				rows, err := via.Query(ctx, sql) // extended protocol in cache_statement
				if err == nil {
					rows.Close()
					err = rows.Err()
				}
				return err
			}
			expectCode(t, query("DECLARE c CURSOR WITH HOLD FOR SELECT ssn FROM patients ORDER BY diagnosis"), "0A000", "DECLARE over ORDER BY a randomized column")
			expectCode(t, query("DECLARE c CURSOR WITH HOLD FOR SELECT secret FROM restricted"), "42501", "DECLARE over a denied column")
			mustExec(t, ctx, via, "INSERT INTO patients (id, dob) VALUES (1, '1980-01-02')")
			mustExec(t, ctx, via, "DECLARE c CURSOR WITH HOLD FOR SELECT id, dob FROM patients")
			mustExec(t, ctx, via, "SET DateStyle = 'German'")
			if mode == pgx.QueryExecModeSimpleProtocol {
				expectCode(t, query("FETCH 1 FROM c"), "0A000", "FETCH of a PHI date as text under DateStyle German")
			} else {
				// pgx asks for dates in binary, which DateStyle does not
				// change.
				var id int32
				var dob time.Time
				if err := via.QueryRow(ctx, "FETCH 1 FROM c").Scan(&id, &dob); err != nil || dob.Format("2006-01-02") != "1980-01-02" {
					t.Fatalf("binary FETCH under DateStyle German: %v %v", err, dob)
				}
			}
			mustExec(t, ctx, via, "RESET DateStyle")
			mustExec(t, ctx, via, "CLOSE c")
			mustExec(t, ctx, via, "DELETE FROM patients")
			stillWorks(t, ctx, via)
		})
	}
}

// TestCursorProtocolClose: an extended-protocol Close of a portal closes
// the SQL cursor of that name (one namespace): phiproxy forgets it too.
func TestCursorProtocolClose(t *testing.T) {
	ctx, via := proxied(t, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, via, "INSERT INTO patients (id, ssn) VALUES (1, '111-11-1111')")
	mustExec(t, ctx, via, "BEGIN")
	mustExec(t, ctx, via, "DECLARE c CURSOR FOR SELECT id, ssn FROM patients")
	syncOne(t, via, &pgproto3.Close{ObjectType: 'P', Name: "c"}, "Close of the cursor's portal", nil)
	expectNotDecrypted(t, ctx, via, "c")
	mustExec(t, ctx, via, "ROLLBACK")
}

// TestCursorPolicyAtFetch: a policy that denies a column, reloaded after
// the DECLARE, holds for the FETCHes that follow (42501), in both
// protocols.
func TestCursorPolicyAtFetch(t *testing.T) {
	ctx, p := start(t)
	defer func() {
		if err := p.phi.Reload(ctx, testCfg); err != nil {
			t.Fatal(err)
		}
	}()
	simple := p.via(pgx.QueryExecModeSimpleProtocol)
	ext := p.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, simple, "INSERT INTO patients (id, ssn) VALUES (1, '111-11-1111')")
	for _, c := range []*pgx.Conn{simple, ext} {
		mustExec(t, ctx, c, "DECLARE c CURSOR WITH HOLD FOR SELECT id, ssn FROM patients")
	}
	deny := *testCfg
	deny.PHI = map[string]map[string]config.Column{}
	for rel, cols := range testCfg.PHI {
		deny.PHI[rel] = map[string]config.Column{}
		for name, col := range cols {
			if col.Ident() == "public.patients.ssn" {
				col.Default, col.Policy.Default = config.AccessDeny, policy.Deny
			}
			deny.PHI[rel][name] = col
		}
	}
	if err := p.phi.Reload(ctx, &deny); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgx.Conn{simple, ext} {
		rows, err := c.Query(ctx, "FETCH 1 FROM c")
		if err == nil {
			rows.Next()
			rows.Close()
			err = rows.Err()
		}
		expectCode(t, err, "42501", "FETCH of a column denied since the DECLARE")
	}
}

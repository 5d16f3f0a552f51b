package phi

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The fail-closed tests: the proxy's model of the session (search_path,
// role, catalog, prepared statements) must never drift from the server's
// so that a statement on the PHI table public.patients is planned as one
// on the plain table fc.patients of the same name. Every check reads the
// database and the server log (log_statement = all) directly: a value
// meant for a PHI column must never leave the proxy unencrypted, not even
// in a statement that then fails.

// fcFixture creates schema fc with a plain patients table (same columns,
// plaintext types) and role fc_r2 (a member role of the app user) with a
// schema of its own name holding another plain patients table.
func fcFixture(t *testing.T, ctx context.Context) *pgx.Conn {
	t.Helper()
	super := superConn(t, ctx)
	plain := `(id int4 PRIMARY KEY, name text, ssn text, diagnosis text, dob date, mrn int8, active bool DEFAULT true, blob bytea)`
	for _, q := range []string{
		`DROP SCHEMA IF EXISTS fc CASCADE`,
		`DROP SCHEMA IF EXISTS fc_r2 CASCADE`,
		`DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fc_r2') THEN CREATE ROLE fc_r2 NOLOGIN; END IF; END$$`,
		`GRANT fc_r2 TO ` + appUser,
		`GRANT ALL ON public.patients TO fc_r2`,
		`CREATE SCHEMA fc AUTHORIZATION ` + appUser,
		`CREATE TABLE fc.patients ` + plain,
		`ALTER TABLE fc.patients OWNER TO ` + appUser,
		`CREATE SCHEMA fc_r2 AUTHORIZATION fc_r2`,
		`CREATE TABLE fc_r2.patients ` + plain,
		`ALTER TABLE fc_r2.patients OWNER TO fc_r2`,
		`GRANT USAGE ON SCHEMA fc TO fc_r2`,
		`GRANT ALL ON fc.patients TO fc_r2`,
	} {
		mustExec(t, ctx, super, q)
	}
	return super
}

// fcStart is fcFixture, then a proxy (start) whose catalog snapshot
// holds its schemas; it returns the test's context, the superuser
// connection and the fixture.
func fcStart(t *testing.T) (context.Context, *pgx.Conn, *fixture) {
	t.Helper()
	super := fcFixture(t, testCtx(t))
	ctx, p := start(t)
	return ctx, super, p
}

// canary is a value unique to the test that must never appear in the
// clear anywhere but in the client's hands.
func canary(t *testing.T, tag string) string {
	return fmt.Sprintf("CANARY-%s-%d", tag, os.Getpid())
}

// assertNotLogged fails if the server log holds v.
func assertNotLogged(t *testing.T, v string) {
	t.Helper()
	log, err := os.ReadFile(testCluster.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if i := strings.Index(string(log), v); i >= 0 {
		start := strings.LastIndexByte(string(log[:i]), '\n') + 1
		end := i + strings.IndexByte(string(log[i:])+"\n", '\n')
		t.Fatalf("the server log holds the plaintext %q:\n%s", v, log[start:end])
	}
}

// whereIs reports which table holds row id: "public" (encrypted: the
// proxy reads back want), "fc", "fc_r2" (plaintext want), or "".
func whereIs(t *testing.T, ctx context.Context, super, c *pgx.Conn, id int, want string) string {
	t.Helper()
	found := ""
	for _, sch := range []string{"fc", "fc_r2"} {
		var ssn string
		err := super.QueryRow(ctx, "SELECT ssn FROM "+sch+".patients WHERE id = $1", id).Scan(&ssn)
		if err == nil {
			if ssn != want {
				t.Fatalf("%s.patients row %d holds %q, want %q", sch, id, ssn, want)
			}
			found = sch
		}
	}
	var raw []byte
	if err := super.QueryRow(ctx, "SELECT ssn FROM public.patients WHERE id = $1", id).Scan(&raw); err == nil {
		if strings.Contains(string(raw), want) {
			t.Fatalf("public.patients row %d holds the plaintext", id)
		}
		var back string
		if err := c.QueryRow(ctx, "SELECT ssn FROM public.patients WHERE id = $1", id).Scan(&back); err != nil || back != want {
			t.Fatalf("public.patients row %d reads back %q, %v", id, back, err)
		}
		if found != "" {
			t.Fatalf("row %d is in both public and %s", id, found)
		}
		found = "public"
	}
	return found
}

func simple(ctx context.Context, c *pgx.Conn, sql string) error {
	_, err := c.PgConn().Exec(ctx, sql).ReadAll()
	return err
}

// mustSimple runs each of sqls in the simple protocol, failing t on the
// first error.
func mustSimple(t *testing.T, ctx context.Context, c *pgx.Conn, sqls ...string) {
	t.Helper()
	for _, sql := range sqls {
		if err := simple(ctx, c, sql); err != nil {
			t.Fatal(err)
		}
	}
}

// encryptedBy runs sqlf (with %s for a canary tagged tag) through c and
// fails t unless row id holds the canary in public.patients, that is
// encrypted, and the server never logged it.
func encryptedBy(t *testing.T, ctx context.Context, super, c *pgx.Conn, id int, tag, sqlf string) {
	t.Helper()
	v := canary(t, tag)
	mustSimple(t, ctx, c, fmt.Sprintf(sqlf, v))
	wentTo(t, ctx, super, c, id, v, "public")
	assertNotLogged(t, v)
}

// mustFailWith runs sql in the simple protocol and fails t unless it
// fails with SQLSTATE code.
func mustFailWith(t *testing.T, ctx context.Context, c *pgx.Conn, sql, code string) {
	t.Helper()
	if err := simple(ctx, c, sql); sqlstate(err) != code {
		t.Fatalf("%s: got %v, want SQLSTATE %s", sql, err, code)
	}
}

// wentTo fails t unless the row id with ssn v is in schema want's
// patients (whereIs).
func wentTo(t *testing.T, ctx context.Context, super, c *pgx.Conn, id int, v, want string) {
	t.Helper()
	if got := whereIs(t, ctx, super, c, id, v); got != want {
		t.Fatalf("row went to %q", got)
	}
}

func TestFailClosedSessionState(t *testing.T) {
	ctx, super, p := fcStart(t)
	open := func(t *testing.T, path string) *pgx.Conn {
		c := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
		mustSimple(t, ctx, c, "SET search_path = "+path)
		return c
	}
	insert := func(id int, v string) string {
		return fmt.Sprintf("insert into patients (id, ssn) values (%d, '%s')", id, v)
	}
	// encrypted inserts a canary tagged tag as row id (encryptedBy).
	encrypted := func(t *testing.T, c *pgx.Conn, id int, tag string) {
		t.Helper()
		encryptedBy(t, ctx, super, c, id, tag, insert(id, "%s"))
	}

	t.Run("1: a SET earlier in the same string", func(t *testing.T) {
		c := open(t, "fc, public")
		v := canary(t, "1")
		mustSimple(t, ctx, c, "set search_path = public; "+insert(101, v))
		wentTo(t, ctx, super, c, 101, v, "public")
		assertNotLogged(t, v)
	})

	t.Run("2 and 8: a SET rolled back with its failed implicit transaction", func(t *testing.T) {
		c := open(t, "public")
		mustFailWith(t, ctx, c, "set search_path = fc, public; select 1/0", "22012")
		encrypted(t, c, 102, "2")
	})

	t.Run("2 in a pipeline: a batch that fails rolls its SET back", func(t *testing.T) {
		c := open(t, "public")
		b := &pgconn.Batch{}
		b.ExecParams("set search_path = fc, public", nil, nil, nil, nil)
		b.ExecParams("select 1/0", nil, nil, nil, nil)
		if _, err := c.PgConn().ExecBatch(ctx, b).ReadAll(); sqlstate(err) != "22012" {
			t.Fatalf("got %v", err)
		}
		v := canary(t, "2b")
		if _, err := c.Exec(ctx, "insert into patients (id, ssn) values ($1, $2)", 202, v); err != nil {
			t.Fatal(err)
		}
		wentTo(t, ctx, super, c, 202, v, "public")
	})

	t.Run("3: COMMIT of a failed transaction is a ROLLBACK", func(t *testing.T) {
		c := open(t, "public")
		for _, q := range []string{"BEGIN", "SET search_path = fc, public", "SELECT 1/0", "COMMIT"} {
			_ = simple(ctx, c, q)
		}
		encrypted(t, c, 103, "3")
	})

	t.Run("3 in one string", func(t *testing.T) {
		c := open(t, "public")
		mustFailWith(t, ctx, c, "BEGIN; SET search_path = fc, public; SELECT 1/0; COMMIT;", "22012")
		mustSimple(t, ctx, c, "COMMIT")
		encrypted(t, c, 203, "3s")
	})

	t.Run("4: ROLLBACK TO SAVEPOINT undoes the SET", func(t *testing.T) {
		c := open(t, "public")
		mustSimple(t, ctx, c, "BEGIN", "SAVEPOINT a", "SET search_path = fc, public", "ROLLBACK TO SAVEPOINT a")
		v := canary(t, "4")
		mustSimple(t, ctx, c, insert(104, v))
		mustSimple(t, ctx, c, "COMMIT")
		wentTo(t, ctx, super, c, 104, v, "public")
		assertNotLogged(t, v)
	})

	t.Run("SET LOCAL ends with its transaction", func(t *testing.T) {
		c := open(t, "public")
		mustSimple(t, ctx, c, "BEGIN", "SET LOCAL search_path = fc, public", "COMMIT")
		encrypted(t, c, 105, "local")
	})

	t.Run("5: a computed set_config is read back from the server", func(t *testing.T) {
		c := open(t, "fc, public")
		mustSimple(t, ctx, c, "select set_config('search'||'_path', 'public', false)")
		encrypted(t, c, 106, "5")
		// And the other way: the plain table, in the clear, as intended.
		mustSimple(t, ctx, c, "select set_config('search'||'_path', 'fc, public', false)")
		mustSimple(t, ctx, c, insert(107, "plain-107"))
		wentTo(t, ctx, super, c, 107, "plain-107", "fc")
	})

	t.Run("6: SET ROLE changes what $user means", func(t *testing.T) {
		c := open(t, `"$user", public`)
		mustSimple(t, ctx, c, "SET ROLE fc_r2")
		mustSimple(t, ctx, c, insert(108, "plain-108"))
		wentTo(t, ctx, super, c, 108, "plain-108", "fc_r2")
		mustSimple(t, ctx, c, "RESET ROLE")
		encrypted(t, c, 109, "6")
	})

	t.Run("7: DDL in the same string, in an open transaction, and committed", func(t *testing.T) {
		c := open(t, "fc, public")
		v := canary(t, "7")
		mustFailWith(t, ctx, c, "drop table fc.patients; "+insert(110, v), "0A000")
		mustSimple(t, ctx, c, "BEGIN")
		mustSimple(t, ctx, c, "drop table fc.patients")
		mustFailWith(t, ctx, c, insert(110, v), "0A000")
		mustSimple(t, ctx, c, "ROLLBACK")
		// Committed: the next statement waits for the catalog refresh.
		mustSimple(t, ctx, c, "drop table fc.patients")
		mustSimple(t, ctx, c, insert(110, v))
		wentTo(t, ctx, super, c, 110, v, "public")
		assertNotLogged(t, v)
	})
}

func TestFailClosedPreparedStatements(t *testing.T) {
	ctx, super, p := fcStart(t)
	c := p.via(pgx.QueryExecModeCacheStatement)

	t.Run("14: PREPARE and EXECUTE in one string", func(t *testing.T) {
		v := canary(t, "14")
		err := simple(ctx, c, fmt.Sprintf("PREPARE ins14(int, text) AS INSERT INTO patients (id, ssn) VALUES ($1, $2); EXECUTE ins14(114, '%s')", v))
		if err != nil {
			t.Fatal(err)
		}
		wentTo(t, ctx, super, c, 114, v, "public")
		assertNotLogged(t, v)
	})

	t.Run("15: a DISCARD ALL the server refused keeps the statement", func(t *testing.T) {
		mustSimple(t, ctx, c, "PREPARE ins15(int, text) AS INSERT INTO patients (id, ssn) VALUES ($1, $2)")
		mustSimple(t, ctx, c, "BEGIN")
		mustFailWith(t, ctx, c, "DISCARD ALL", "25001")
		mustSimple(t, ctx, c, "ROLLBACK")
		encryptedBy(t, ctx, super, c, 115, "15", "EXECUTE ins15(115, '%s')")
	})

	t.Run("15: a duplicate PREPARE that fails keeps the first", func(t *testing.T) {
		mustSimple(t, ctx, c, "PREPARE ins16(int, text) AS INSERT INTO public.patients (id, ssn) VALUES ($1, $2)")
		mustFailWith(t, ctx, c, "PREPARE ins16(int, text) AS INSERT INTO fc.patients (id, ssn) VALUES ($1, $2)", "42P05")
		encryptedBy(t, ctx, super, c, 116, "15b", "EXECUTE ins16(116, '%s')")
	})

	t.Run("15: SQL PREPARE then protocol Bind, protocol Parse then SQL EXECUTE", func(t *testing.T) {
		mustSimple(t, ctx, c, "PREPARE ins17(int, text) AS INSERT INTO patients (id, ssn) VALUES ($1, $2)")
		v := canary(t, "15c")
		if r := c.PgConn().ExecPrepared(ctx, "ins17", [][]byte{[]byte("117"), []byte(v)}, nil, nil).Read(); r.Err != nil {
			t.Fatal(r.Err)
		}
		wentTo(t, ctx, super, c, 117, v, "public")
		if _, err := c.PgConn().Prepare(ctx, "ins18", "INSERT INTO patients (id, ssn) VALUES ($1, $2)", nil); err != nil {
			t.Fatal(err)
		}
		w := canary(t, "15d")
		mustSimple(t, ctx, c, fmt.Sprintf("EXECUTE ins18(118, '%s')", w))
		wentTo(t, ctx, super, c, 118, w, "public")
		assertNotLogged(t, v)
		assertNotLogged(t, w)
	})

	t.Run("15: EXECUTE of a name the proxy does not know is refused", func(t *testing.T) {
		v := canary(t, "15e")
		mustFailWith(t, ctx, c, fmt.Sprintf("EXECUTE nosuch(119, '%s')", v), "26000")
		assertNotLogged(t, v)
	})

	t.Run("15: a Close and re-Parse the server skipped after an error", func(t *testing.T) {
		if _, err := c.PgConn().Prepare(ctx, "ins20", "INSERT INTO patients (id, ssn) VALUES ($1, $2)", nil); err != nil {
			t.Fatal(err)
		}
		// One batch: an error, then a Close and a Parse of the same name on
		// the plain table, which the server skips to Sync.
		b := &pgconn.Batch{}
		b.ExecParams("select 1/0", nil, nil, nil, nil)
		b.ExecParams("deallocate ins20", nil, nil, nil, nil)
		b.ExecParams("prepare ins20(int, text) as insert into fc.patients (id, ssn) values ($1, $2)", nil, nil, nil, nil)
		if _, err := c.PgConn().ExecBatch(ctx, b).ReadAll(); sqlstate(err) != "22012" {
			t.Fatalf("got %v", err)
		}
		v := canary(t, "15f")
		if r := c.PgConn().ExecPrepared(ctx, "ins20", [][]byte{[]byte("120"), []byte(v)}, nil, nil).Read(); r.Err != nil {
			t.Fatal(r.Err)
		}
		wentTo(t, ctx, super, c, 120, v, "public")
		assertNotLogged(t, v)
	})
}

// stateSteps are the statements the property test draws from: every way
// the server's search_path, role and transaction state can move.
var stateSteps = []string{
	"SET search_path = fc, public", "SET search_path = public", `SET search_path = "$user", public`,
	"SET LOCAL search_path = fc, public", "RESET search_path", "SET search_path TO DEFAULT",
	"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "RELEASE SAVEPOINT a",
	"SELECT 1/0", "SET ROLE fc_r2", "RESET ROLE", "SET LOCAL ROLE fc_r2",
	"select set_config('search'||'_path', 'public', false)", "select set_config('search_path', 'fc, public', true)",
	"select set_config('search_path', 'fc, public', false)",
}

// For random sequences of session-state statements — sent in separate
// round trips, in one string, and pipelined in one batch — the relation
// an INSERT through the proxy writes to is the one the server resolves
// the name to, and a value meant for the PHI table never reaches the
// server in the clear.
func TestFailClosedStateProperty(t *testing.T) {
	ctx, super, p := fcStart(t)
	var oids = map[uint32]string{}
	for _, sch := range []string{"public", "fc", "fc_r2"} {
		var oid uint32
		if err := super.QueryRow(ctx, "SELECT '"+sch+".patients'::regclass::oid").Scan(&oid); err != nil {
			t.Fatal(err)
		}
		oids[oid] = sch
	}
	seed := int64(11)
	if s := os.Getenv("PHI_STATE_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	rng := rand.New(rand.NewSource(seed))
	refused, written := 0, 0
	id := 1000
	for round := 0; round < 90; round++ {
		mode := round % 3
		steps := make([]string, 1+rng.Intn(5))
		for i := range steps {
			steps[i] = stateSteps[rng.Intn(len(stateSteps))]
		}
		c := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
		mustSimple(t, ctx, c, "SET search_path = public")
		switch mode {
		case 0:
			for _, q := range steps {
				_ = simple(ctx, c, q)
			}
		case 1:
			_ = simple(ctx, c, strings.Join(steps, "; "))
		case 2:
			b := &pgconn.Batch{}
			for _, q := range steps {
				b.ExecParams(q, nil, nil, nil, nil)
			}
			_, _ = c.PgConn().ExecBatch(ctx, b).ReadAll()
		}
		id++
		v := fmt.Sprintf("CANARY-P-%d-%d", os.Getpid(), id)
		// What the server resolves the name to, in the same state.
		var oid uint32
		resolveErr := c.QueryRow(ctx, "SELECT 'patients'::regclass::oid", pgx.QueryExecModeSimpleProtocol).Scan(&oid)
		// The row may be in a transaction still open: RETURNING says where
		// it went.
		var into uint32
		err := c.QueryRow(ctx, fmt.Sprintf("insert into patients (id, ssn) values (%d, '%s') returning tableoid", id, v),
			pgx.QueryExecModeSimpleProtocol).Scan(&into)
		desc := fmt.Sprintf("mode %d, steps %q", mode, steps)
		switch {
		case err == nil:
			written++
			if resolveErr != nil {
				t.Fatalf("%s: the insert ran where the server could not resolve the name: %v", desc, resolveErr)
			}
			if got, want := oids[into], oids[oid]; got != want {
				t.Fatalf("%s: the row went to %s.patients, the server resolves patients to %s.patients", desc, got, want)
			}
			if oids[oid] == "public" {
				var back string
				if err := c.QueryRow(ctx, "SELECT ssn FROM public.patients WHERE id = $1", id).Scan(&back); err != nil || back != v {
					t.Fatalf("%s: public.patients row reads back %q, %v", desc, back, err)
				}
				assertNotLogged(t, v)
			}
		case sqlstate(err) == "0A000":
			refused++
			assertNotLogged(t, v)
		default:
			// A failed transaction (25P02) or a privilege error: nothing
			// written, and nothing in the clear if it was meant for PHI.
			if resolveErr == nil && oids[oid] == "public" {
				assertNotLogged(t, v)
			}
		}
		_ = simple(ctx, c, "ROLLBACK")
		c.Close(ctx)
	}
	t.Logf("%d writes checked, %d refused as unknown state", written, refused)
	if written < 30 {
		t.Fatalf("only %d of 90 rounds wrote: the property was barely tested", written)
	}
}

func TestFailClosedTempTablesGuardsAndNestedExecute(t *testing.T) {
	ctx, super, p := fcStart(t)
	c := p.via(pgx.QueryExecModeCacheStatement)
	var publicOID uint32
	if err := super.QueryRow(ctx, "SELECT 'public.patients'::regclass::oid").Scan(&publicOID); err != nil {
		t.Fatal(err)
	}

	t.Run("18: a temporary table named like the PHI table is found first", func(t *testing.T) {
		mustSimple(t, ctx, c, "CREATE TEMP TABLE patients (id int, ssn text)")
		var into uint32
		if err := c.QueryRow(ctx, "insert into patients (id, ssn) values (181, 'plain-temp') returning tableoid", pgx.QueryExecModeSimpleProtocol).Scan(&into); err != nil {
			t.Fatal(err)
		}
		if into == publicOID {
			t.Fatal("the row went to public.patients, not the temporary table")
		}
		for _, q := range []string{"select ssn from patients where ssn = 'plain-temp'", "select ssn from pg_temp.patients where ssn = 'plain-temp'"} {
			var got string
			if err := c.QueryRow(ctx, q, pgx.QueryExecModeSimpleProtocol).Scan(&got); err != nil || got != "plain-temp" {
				t.Fatalf("%s: %q, %v", q, got, err)
			}
		}
		// Dropped, the name means the PHI table again.
		mustSimple(t, ctx, c, "DROP TABLE patients")
		encryptedBy(t, ctx, super, c, 182, "18", "insert into patients (id, ssn) values (182, '%s')")
	})

	t.Run("18: a temporary table created in a transaction that rolls back", func(t *testing.T) {
		mustSimple(t, ctx, c, "BEGIN", "CREATE TEMP TABLE patients (id int, ssn text)", "ROLLBACK")
		encryptedBy(t, ctx, super, c, 183, "18b", "insert into patients (id, ssn) values (183, '%s')")
	})

	t.Run("9: the envelope CHECK cannot be dropped through the proxy", func(t *testing.T) {
		for _, q := range []string{
			"ALTER TABLE patients DROP CONSTRAINT phiproxy_ssn_envelope",
			"ALTER TABLE public.patients RENAME CONSTRAINT phiproxy_ssn_envelope TO x",
		} {
			mustFailWith(t, ctx, c, q, "42501")
		}
		var n int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_constraint WHERE conname = 'phiproxy_ssn_envelope'").Scan(&n); err != nil || n != 1 {
			t.Fatalf("constraint count %d, %v", n, err)
		}
	})

	t.Run("16: EXECUTE under EXPLAIN and CREATE TABLE AS", func(t *testing.T) {
		mustSimple(t, ctx, c, "PREPARE ins16e(int, text) AS INSERT INTO patients (id, ssn) VALUES ($1, $2)")
		mustSimple(t, ctx, c, "PREPARE find16(text) AS SELECT id FROM patients WHERE ssn = $1")
		v := canary(t, "16")
		mustSimple(t, ctx, c, fmt.Sprintf("EXPLAIN ANALYZE EXECUTE ins16e(161, '%s')", v))
		wentTo(t, ctx, super, c, 161, v, "public")
		res, err := c.PgConn().Exec(ctx, fmt.Sprintf("EXPLAIN EXECUTE find16('%s')", v)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		var plan strings.Builder
		for _, r := range res {
			for _, row := range r.Rows {
				plan.Write(row[0])
				plan.WriteByte('\n')
			}
		}
		if !strings.Contains(plan.String(), "<encrypted>") || strings.Contains(plan.String(), `\x504801`) {
			t.Fatalf("EXPLAIN output shows the encrypted constant as:\n%s", plan.String())
		}
		mustSimple(t, ctx, c, fmt.Sprintf("CREATE TEMP TABLE found16 AS EXECUTE find16('%s')", v))
		var id int
		if err := c.QueryRow(ctx, "SELECT id FROM found16").Scan(&id); err != nil || id != 161 {
			t.Fatalf("CREATE TABLE AS EXECUTE found %d, %v", id, err)
		}
		assertNotLogged(t, v)
	})
}

// A view created through the proxy over a PHI table is known to no
// catalog snapshot until the refresh after its commit: a statement naming
// it must neither run against the old snapshot (its literal would go out
// in the clear and find nothing) nor be planned before the refresh.
func TestFailClosedViewCreatedThroughTheProxy(t *testing.T) {
	ctx := testCtx(t)
	super := fcFixture(t, ctx)
	t.Cleanup(func() {
		for _, v := range []string{"leaky1", "leaky2", "leaky3"} {
			_, _ = super.Exec(context.Background(), "DROP VIEW IF EXISTS public."+v)
		}
	})
	p := startProxy(t)
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)

	v := canary(t, "view1")
	mustSimple(t, ctx, c, "CREATE VIEW leaky1 AS SELECT ssn FROM patients")
	mustFailWith(t, ctx, c, fmt.Sprintf("SELECT ssn FROM leaky1 WHERE ssn = '%s'", v), "0A000")
	assertNotLogged(t, v)

	w := canary(t, "view2")
	mustFailWith(t, ctx, c, fmt.Sprintf("create view leaky2 as select ssn from patients; select ssn from leaky2 where ssn = '%s'", w), "0A000")
	assertNotLogged(t, w)

	x := canary(t, "view3")
	mustSimple(t, ctx, c, "BEGIN")
	mustSimple(t, ctx, c, "CREATE VIEW leaky3 AS SELECT ssn FROM patients")
	mustFailWith(t, ctx, c, fmt.Sprintf("SELECT ssn FROM leaky3 WHERE ssn = '%s'", x), "0A000")
	mustSimple(t, ctx, c, "ROLLBACK")
	assertNotLogged(t, x)
}

package phi

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// shadowing connects as the superuser, drops schema and role (with what
// role owns) as an earlier run left them, and runs setup: the schema and
// role of a test whose plain patients table shadows the PHI one.
func shadowing(t *testing.T, ctx context.Context, schema, role string, setup ...string) *pgx.Conn {
	t.Helper()
	super := superConn(t, ctx)
	for _, q := range append([]string{
		`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`,
		`DO $$BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '` + role + `') THEN EXECUTE 'DROP OWNED BY ` + role + `'; END IF; END$$`,
		`DROP ROLE IF EXISTS ` + role,
	}, setup...) {
		mustExec(t, ctx, super, q)
	}
	return super
}

// The session's starting search_path decides which "patients" an
// unqualified name means: a non-PHI shadow.patients must be left alone
// (no encryption), exactly as PostgreSQL resolves the name.
func TestSearchPathStartsWhereThePostgreSQLSessionStarts(t *testing.T) {
	ctx := testCtx(t)
	super := shadowing(t, ctx, "shadow", "sp_role",
		`CREATE SCHEMA shadow`,
		`CREATE TABLE shadow.patients (id int PRIMARY KEY, ssn text)`,
		`GRANT USAGE ON SCHEMA shadow TO `+appUser,
		`GRANT ALL ON shadow.patients TO `+appUser,
		`CREATE ROLE sp_role LOGIN PASSWORD 'sp-pw'`,
		`GRANT USAGE ON SCHEMA shadow TO sp_role`,
		`GRANT ALL ON shadow.patients TO sp_role`,
		`GRANT ALL ON public.patients TO sp_role`,
		`ALTER ROLE sp_role SET search_path = shadow, public`,
	)
	// The catalog snapshot (with the role default) is taken at start.
	p := startProxy(t)

	check := func(t *testing.T, c *pgx.Conn, id int) {
		t.Helper()
		mustExec(t, ctx, c, "INSERT INTO patients (id, ssn) VALUES ($1, 'plain-text')", id)
		var stored string
		if err := super.QueryRow(ctx, "SELECT ssn FROM shadow.patients WHERE id = $1", id).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if stored != "plain-text" {
			t.Fatalf("shadow.patients got %q: the proxy treated it as the PHI table", stored)
		}
		var back string
		if err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", id).Scan(&back); err != nil || back != "plain-text" {
			t.Fatalf("read back %q, %v", back, err)
		}
	}

	t.Run("search_path in the startup options", func(t *testing.T) {
		c := connectWithOptions(t, ctx, p.dsn(), `-c search_path=shadow,public`)
		check(t, c, 1)
		// RESET returns to the startup value, not to PostgreSQL's default.
		mustExec(t, ctx, c, "RESET search_path")
		check(t, c, 2)
		// SET to public reaches the PHI table again, encrypted.
		mustExec(t, ctx, c, "SET search_path = public")
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM patients WHERE ssn = $1", "nobody").Scan(&n); err != nil || n != 0 {
			t.Fatalf("PHI lookup after SET: %d, %v", n, err)
		}
	})

	t.Run("search_path from ALTER ROLE … SET", func(t *testing.T) {
		dsn := "postgres://sp_role:sp-pw@" + p.addr + "/" + appDB + "?sslmode=disable"
		c := connect(t, ctx, dsn, pgx.QueryExecModeCacheStatement)
		check(t, c, 3)
	})

	t.Run("searchPathOption reads options as the server splits them", func(t *testing.T) {
		for _, tc := range []struct {
			opts, want string
			ok         bool
		}{
			{`-c search_path=a,b`, "a,b", true},
			{`-csearch_path=a`, "a", true},
			{`--search_path=a`, "a", true},
			{`--search-path=a`, "a", true},
			{`-c search_path=a\ b -c TimeZone=UTC`, "a b", true},
			{`-c TimeZone=UTC`, "", false},
			{`-c search_path=a -c search_path=b`, "b", true},
		} {
			got, ok := searchPathOption(tc.opts)
			if got != tc.want || ok != tc.ok {
				t.Errorf("searchPathOption(%q) = %q, %v; want %q, %v", tc.opts, got, ok, tc.want, tc.ok)
			}
		}
	})
}

// Issue 18, bad input item 3: a startup packet's options that change
// what the proxy tracks. role (through options or as a parameter) makes
// "$user" in search_path the new role: an unqualified PHI name must
// resolve where PostgreSQL resolves it, or be refused — never a write to
// the other table.
func TestStartupRoleOptionResolvesAsTheServer(t *testing.T) {
	ctx := testCtx(t)
	super := shadowing(t, ctx, "opt_role", "opt_role",
		`CREATE ROLE opt_role`,
		`GRANT opt_role TO `+appUser,
		`CREATE SCHEMA opt_role AUTHORIZATION opt_role`,
		`CREATE TABLE opt_role.patients (id int PRIMARY KEY, ssn text)`,
		`ALTER TABLE opt_role.patients OWNER TO opt_role`,
		`GRANT ALL ON public.patients TO opt_role`,
		`DROP ROLE IF EXISTS opt_login`,
		`CREATE ROLE opt_login LOGIN PASSWORD 'opt-pw' IN ROLE opt_role`,
		`ALTER ROLE opt_login SET role = 'opt_role'`,
	)
	t.Cleanup(func() {
		_, _ = super.Exec(context.Background(), `DROP ROLE IF EXISTS opt_login`)
	})
	// The catalog snapshot (with the role default) is taken at start.
	p := startProxy(t)
	for i, tc := range []struct{ name, options, role string }{
		{"options -c role", "-c role=opt_role", ""},
		{"options -crole", "-crole=opt_role", ""},
		{"options --role", "--role=opt_role", ""},
		{"startup parameter role", "", "opt_role"},
		{"ALTER ROLE SET role", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := p.dsn()
			if tc.name == "ALTER ROLE SET role" {
				dsn = "postgres://opt_login:opt-pw@" + p.addr + "/" + appDB + "?sslmode=disable"
			}
			c := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol, func(cc *pgx.ConnConfig) {
				if tc.options != "" {
					cc.RuntimeParams["options"] = tc.options
				}
				if tc.role != "" {
					cc.RuntimeParams["role"] = tc.role
				}
			})
			var cu string
			if err := c.QueryRow(ctx, "SELECT current_user").Scan(&cu); err != nil || cu != "opt_role" {
				t.Fatalf("current_user %q, %v: the server did not take the role", cu, err)
			}
			_, err := c.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES ($1, 'plain-text')", 10+i)
			var inShadow, inPHI int
			if err := super.QueryRow(ctx, "SELECT (SELECT count(*) FROM opt_role.patients WHERE id = $1), (SELECT count(*) FROM public.patients WHERE id = $1)", 10+i).Scan(&inShadow, &inPHI); err != nil {
				t.Fatal(err)
			}
			if err == nil && inShadow != 1 {
				t.Fatalf("the INSERT went to public.patients (%d rows) while PostgreSQL resolves patients to opt_role.patients", inPHI)
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			// And the PHI table, named, is still encrypted.
			mustExec(t, ctx, c, "INSERT INTO public.patients (id, ssn) VALUES ($1, $2)", 20+i, "phi-ssn")
			var raw []byte
			if err := super.QueryRow(ctx, "SELECT ssn FROM public.patients WHERE id = $1", 20+i).Scan(&raw); err != nil || string(raw) == "phi-ssn" {
				t.Fatalf("public.patients.ssn stored %q, %v", raw, err)
			}
		})
	}
}

// Issue 18, item 6: a function whose own SET search_path makes its body
// write the PHI table: called through the proxy, the value never lands
// in the PHI column in plaintext (the proxy refuses a function it knows
// reads PHI; the column's type and envelope check refuse the rest).
func TestFunctionSearchPathCannotWritePlaintext(t *testing.T) {
	ctx := testCtx(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	for _, q := range []string{
		"DROP FUNCTION IF EXISTS fsp_write(text)",
		"CREATE FUNCTION fsp_write(v text) RETURNS void LANGUAGE sql SET search_path = public AS $$ INSERT INTO patients (id, ssn) VALUES (7777, convert_to(v, 'UTF8')) $$",
	} {
		mustExec(t, ctx, direct, q)
	}
	t.Cleanup(func() { direct.Exec(context.Background(), "DROP FUNCTION IF EXISTS fsp_write(text)") })
	p := startProxy(t)
	c := canary(t, "fsp")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		conn := connect(t, ctx, p.dsn(), mode)
		_, err := conn.Exec(ctx, "SET search_path = pg_temp, public")
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "SELECT fsp_write($1)", c)
		if err == nil {
			t.Errorf("%s: the function wrote the PHI table", mode)
		}
	}
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM patients WHERE position(convert_to($1, 'UTF8') in coalesce(ssn, ''::bytea)) > 0", c).Scan(&n); err != nil || n != 0 {
		t.Fatalf("plaintext in the PHI column: %d rows, %v", n, err)
	}
}

package phi

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

// The session's starting search_path decides which "patients" an
// unqualified name means: a non-PHI shadow.patients must be left alone
// (no encryption), exactly as PostgreSQL resolves the name.
func TestSearchPathStartsWhereThePostgreSQLSessionStarts(t *testing.T) {
	ctx := testCtx(t)
	super := superConn(t, ctx)
	mustExec(t, ctx, super, `DROP SCHEMA IF EXISTS shadow CASCADE`)
	mustExec(t, ctx, super, `DO $$BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'sp_role') THEN EXECUTE 'DROP OWNED BY sp_role'; END IF; END$$`)
	mustExec(t, ctx, super, `DROP ROLE IF EXISTS sp_role`)
	for _, q := range []string{
		`CREATE SCHEMA shadow`,
		`CREATE TABLE shadow.patients (id int PRIMARY KEY, ssn text)`,
		`GRANT USAGE ON SCHEMA shadow TO ` + appUser,
		`GRANT ALL ON shadow.patients TO ` + appUser,
		`CREATE ROLE sp_role LOGIN PASSWORD 'sp-pw'`,
		`GRANT USAGE ON SCHEMA shadow TO sp_role`,
		`GRANT ALL ON shadow.patients TO sp_role`,
		`GRANT ALL ON public.patients TO sp_role`,
		`ALTER ROLE sp_role SET search_path = shadow, public`,
	} {
		mustExec(t, ctx, super, q)
	}
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

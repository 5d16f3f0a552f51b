package phi

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Issue 18, bad input item 3: a startup packet's options that change
// what the proxy tracks. role (through options or as a parameter) makes
// "$user" in search_path the new role: an unqualified PHI name must
// resolve where PostgreSQL resolves it, or be refused — never a write to
// the other table.
func TestStartupRoleOptionResolvesAsTheServer(t *testing.T) {
	ctx := testCtx(t)
	super := superConn(t, ctx)
	mustExec(t, ctx, super, `DROP SCHEMA IF EXISTS opt_role CASCADE`)
	mustExec(t, ctx, super, `DO $$BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'opt_role') THEN EXECUTE 'DROP OWNED BY opt_role'; END IF; END$$`)
	mustExec(t, ctx, super, `DROP ROLE IF EXISTS opt_role`)
	for _, q := range []string{
		`CREATE ROLE opt_role`,
		`GRANT opt_role TO ` + appUser,
		`CREATE SCHEMA opt_role AUTHORIZATION opt_role`,
		`CREATE TABLE opt_role.patients (id int PRIMARY KEY, ssn text)`,
		`ALTER TABLE opt_role.patients OWNER TO opt_role`,
		`GRANT ALL ON public.patients TO opt_role`,
	} {
		mustExec(t, ctx, super, q)
	}
	mustExec(t, ctx, super, `DROP ROLE IF EXISTS opt_login`)
	mustExec(t, ctx, super, `CREATE ROLE opt_login LOGIN PASSWORD 'opt-pw' IN ROLE opt_role`)
	mustExec(t, ctx, super, `ALTER ROLE opt_login SET role = 'opt_role'`)
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

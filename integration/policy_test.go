package integration

import (
	"strings"
	"testing"
)

// The policy through real clients: psql and psycopg as a billing role
// get the mask, and 42501 for a predicate on the masked column; the app
// role, whose rules fall to the default, gets plaintext.
func TestPolicyThroughClients(t *testing.T) {
	f := phiFixture(t)
	for _, q := range []string{
		"DO $$BEGIN CREATE ROLE pol_billing NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$",
		"DO $$BEGIN CREATE ROLE pol_bob LOGIN PASSWORD 'pol-pw' IN ROLE pol_billing; EXCEPTION WHEN duplicate_object THEN NULL; END$$",
	} {
		if err := fixture.cluster.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := phiDirect(t).Exec(t.Context(), "GRANT ALL ON patients, visits TO pol_bob"); err != nil {
		t.Fatal(err)
	}
	section := phiSection(phiColumns)
	policy := strings.Replace(section, "ssn: {type: text, mode: deterministic, default: plaintext}",
		"ssn: {type: text, mode: deterministic, default: plaintext, read: [{roles: [pol_billing], access: \"mask:last4\"}]}", 1)
	if policy == section {
		t.Fatal("the fixture's ssn column is not where the test expects it")
	}
	p := startProxy(t, proxyOpts{extra: strings.Replace(f.extra, section, policy, 1), catalogDB: phiDB})
	app := appDSN(p.addr(), phiDB)
	bob := fixture.dsn(p.addr(), "pol_bob", "pol-pw", phiDB)
	if out, err := psql(t, app, "-c", "INSERT INTO patients (id, name, ssn) VALUES (1, 'a', '123-45-6789')"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, c := range []struct {
		who, dsn, sql, want string
	}{
		{"app", app, "SELECT ssn FROM patients WHERE id = 1", "123-45-6789"},
		{"billing", bob, "SELECT ssn FROM patients WHERE id = 1", "***-**-6789"},
		{"billing probing", bob, "SELECT id FROM patients WHERE ssn = '123-45-6789'", "42501"},
	} {
		out, err := psql(t, c.dsn, "-A", "-t", "-v", "VERBOSITY=verbose", "-c", c.sql)
		if got := strings.TrimSpace(out); !strings.Contains(got, c.want) || (c.want != "42501") != (err == nil) {
			t.Errorf("psql as %s: %q (%v), want %q", c.who, got, err, c.want)
		}
	}
	script := `import sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    print(c.execute("SELECT ssn FROM patients WHERE id = %s", (1,)).fetchone()[0])
    try:
        c.execute("SELECT id FROM patients WHERE ssn = %s", ("123-45-6789",))
        print("not refused")
    except psycopg.Error as e:
        print(e.sqlstate)
`
	out := runCmd(t, pythonBin, "-c", script, bob)
	if got := strings.Fields(out); len(got) != 2 || got[0] != "***-**-6789" || got[1] != "42501" {
		t.Fatalf("psycopg as billing: %q", out)
	}
}

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
)

// The PHI fixture: database phi owned by app, the encrypted schema, its
// plaintext twin, keysets made with the real `phiproxy keys` CLI, and the
// phi: section every PHI test's proxy runs with. It is built once per
// package run, on first use.

const phiDB = "phi"

// phiSchema is created as app in database phi. patients/visits hold PHI as
// bytea; *_plain are the same tables with the logical types, used direct as
// the reference every client's results are compared with. note is a
// non-PHI text column (the canary test's control).
const phiSchema = `
CREATE TABLE patients (id serial PRIMARY KEY, name text, ssn bytea, diagnosis bytea, dob bytea, mrn bytea, secret bytea, note text);
CREATE TABLE visits (id serial PRIMARY KEY, patient_ssn bytea, visited_on date);
CREATE TABLE patients_plain (id serial PRIMARY KEY, name text, ssn text, diagnosis text, dob date, mrn int8, secret text, note text);
CREATE TABLE visits_plain (id serial PRIMARY KEY, patient_ssn text, visited_on date);
`

// phiColumns are the configured PHI columns: the fixture's phi: section.
var phiColumns = []config.Column{
	{Schema: "public", Table: "patients", Name: "ssn", Type: "text", Mode: config.ModeDeterministic, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "diagnosis", Type: "text", Mode: config.ModeRandomized, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "dob", Type: "date", Mode: config.ModeRandomized, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "mrn", Type: "int8", Mode: config.ModeDeterministic, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "secret", Type: "text", Mode: config.ModeRandomized, Default: config.AccessDeny},
	{Schema: "public", Table: "visits", Name: "patient_ssn", Type: "text", Mode: config.ModeDeterministic, Key: "public.patients.ssn", Default: config.AccessPlaintext},
}

// phiSection returns the phi: section of a config that declares cols
// (listed relation by relation).
func phiSection(cols []config.Column) string {
	var b strings.Builder
	b.WriteString("phi:\n")
	for i, c := range cols {
		if i == 0 || c.Relation() != cols[i-1].Relation() {
			fmt.Fprintf(&b, "  %s:\n", c.Relation())
		}
		fmt.Fprintf(&b, "    %s: {type: %s, mode: %s", c.Name, c.Type, c.Mode)
		if c.Key != "" {
			fmt.Fprintf(&b, ", key: %s", c.Key)
		}
		fmt.Fprintf(&b, ", default: %s}\n", c.Default)
	}
	return b.String()
}

type phiEnv struct {
	// extra is the YAML appended to the proxy config: keys and phi.
	extra string
	// keysDir holds the KEK and keysets (outside the cluster directory).
	keysDir string
}

var phiShared perRun[*phiEnv]

// phiFixture builds the PHI fixture on first use.
func phiFixture(t *testing.T) *phiEnv {
	t.Helper()
	f := phiShared.get(t, "PHI fixture", buildPHIFixture)
	// Each test starts from empty tables, so tests neither depend on each
	// other's rows nor collide when the package runs with -count > 1.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := phiDirect(t)
	if _, err := conn.Exec(ctx, "TRUNCATE patients, visits, patients_plain, visits_plain RESTART IDENTITY"); err != nil {
		t.Fatalf("PHI fixture: %v", err)
	}
	return f
}

func buildPHIFixture() (*phiEnv, error) {
	e := fixture
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.cluster.Exec(ctx, "CREATE DATABASE "+phiDB+" OWNER app"); err != nil {
		return nil, err
	}
	if err := execAsApp(ctx, phiDB, withEnvelopeChecks(phiSchema, phiColumns)); err != nil {
		return nil, err
	}
	f := &phiEnv{keysDir: filepath.Join(e.work, "phi-keys")}
	var err error
	f.extra, err = createKeys(ctx, f.keysDir, phiDB, phiSection(phiColumns), "")
	return f, err
}

// withEnvelopeChecks returns schema followed by the CHECK constraint that
// lets only envelopes into each of cols.
func withEnvelopeChecks(schema string, cols []config.Column) []string {
	ddl := []string{schema}
	for _, c := range cols {
		ddl = append(ddl, crypto.EnvelopeCheckSQL(c))
	}
	return ddl
}

// execAsApp runs ddl in database db as the superuser with SET ROLE app,
// so that app owns what it makes.
func execAsApp(ctx context.Context, db string, ddl []string) error {
	e := fixture
	conn, err := pgx.Connect(ctx, e.cluster.DSN(e.cluster.SuperUser, e.cluster.SuperPassword, db, "sslmode=disable"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range append(append([]string{"SET ROLE app"}, ddl...), "RESET ROLE") {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// createKeys makes, in dir, a KEK and the keysets of the phi: section phi
// with the real `phiproxy keys` CLI, whose config reads the catalog from
// database catalogDB (with the top-level settings added), and returns the
// keys: and phi: sections for a proxy's config.
func createKeys(ctx context.Context, dir, catalogDB, phi, settings string) (string, error) {
	e := fixture
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	extra := fmt.Sprintf("keys: {dir: %s, kek: \"file://%s\"}\n", filepath.Join(dir, "keysets"), filepath.Join(dir, "kek.json")) + phi
	// The keys CLI reads the same keys: and phi: sections as the proxy.
	cfg := filepath.Join(dir, "phiproxy.yaml")
	head := fmt.Sprintf("listen: 127.0.0.1:1\nupstream: {address: %s, sslmode: disable}\ncatalog_dsn: postgres://%s@%s/%s?sslmode=disable\n",
		e.cluster.Addr(), e.cluster.SuperUser, e.cluster.Addr(), catalogDB)
	if err := os.WriteFile(cfg, []byte(head+settings+extra), 0o600); err != nil {
		return "", err
	}
	for _, action := range []string{"init", "create"} {
		out, err := exec.CommandContext(ctx, e.binary, "keys", action, "--config", cfg).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("phiproxy keys %s: %v\n%s", action, err, out)
		}
	}
	return extra, nil
}

// startPHIProxy runs phiproxy serve with the fixture's keys and phi: map.
func startPHIProxy(t *testing.T) *proxy {
	t.Helper()
	f := phiFixture(t)
	return startProxy(t, proxyOpts{extra: f.extra, catalogDB: phiDB})
}

// phiDirect connects to database phi as app, around the proxy.
func phiDirect(t *testing.T) *pgx.Conn {
	t.Helper()
	e := fixture
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return testenv.Connect(t, ctx, appDSN(e.cluster.Addr(), phiDB), nil)
}

// assertCiphertext checks, around the proxy, that the rows with ids in
// [lo, hi] hold only envelopes in every PHI column of patients and that at
// least one PHI value is there at all.
func assertCiphertext(t *testing.T, lo, hi int) {
	t.Helper()
	conn := phiDirect(t)
	var nonNull, bad int
	err := conn.QueryRow(context.Background(), `
SELECT count(v), count(v) FILTER (WHERE substring(v from 1 for 3) <> decode('504801', 'hex'))
FROM patients, LATERAL (VALUES (ssn), (diagnosis), (dob), (mrn), (secret)) AS c(v)
WHERE id BETWEEN $1 AND $2`, lo, hi).Scan(&nonNull, &bad)
	if err != nil {
		t.Fatal(err)
	}
	if nonNull == 0 || bad != 0 {
		t.Fatalf("patients ids %d..%d around the proxy: %d non-NULL PHI values, %d without the envelope header", lo, hi, nonNull, bad)
	}
}

// diffLines reports the first differing line of two outputs.
func diffLines(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n  through the proxy: %q\n  direct (plain):    %q", i+1, gl, wl)
		}
	}
	return ""
}

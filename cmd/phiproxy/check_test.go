package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/check"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgcluster"
)

func TestCheckUsage(t *testing.T) {
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("listen: 127.0.0.1:0\nbogus: 1\n"), 0o600)
	for _, args := range [][]string{nil, {"--config"}, {"--config", "x.yaml", "extra"}, {"--nope"},
		{"--config", "/nonexistent.yaml"}, {"--config", bad}, {"--config", bad, "--format", "xml"}, {"--config", bad, "--sample", "0"}} {
		err := runCheck(context.Background(), env, args)
		var u usageError
		if !errors.As(err, &u) || exitCode(env, err) != 2 {
			t.Errorf("check %q = %v, want a usage error (exit 2)", args, err)
		}
	}
	if err := runCheck(context.Background(), env, []string{"--help"}); err != nil {
		t.Errorf("--help: %v", err)
	}
	// A database that cannot be reached: the check could not run (2), not findings (1).
	unreachable := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(unreachable, []byte("listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://c@127.0.0.1:1/db?sslmode=disable&connect_timeout=2\n"), 0o600)
	if err := runCheck(context.Background(), env, []string{"--config", unreachable}); exitCode(env, err) != 2 {
		t.Errorf("unreachable database: %v, exit %d, want 2", err, exitCode(env, err))
	}
}

// checkRun runs `phiproxy check ARGS` and returns stdout and the exit code.
func checkRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cmdEnv{stdout: &out, stderr: &errb}
	err := run(context.Background(), env, append([]string{"check"}, args...))
	return out.String(), exitCode(env, err)
}

// checkJSON runs check --format json and parses its report.
func checkJSON(t *testing.T, cfg string) (check.Report, int) {
	t.Helper()
	out, code := checkRun(t, "--config", cfg, "--format", "json")
	var rep check.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check --format json: %v\n%s", err, out)
	}
	return rep, code
}

// checkCluster starts a throwaway cluster for this test only (the
// package has no shared one) and points PGPASSFILE at its superuser.
func checkCluster(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{NoTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	pgpass, err := c.WritePgpass()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", pgpass)
	return c
}

// checkDB creates database name with schema (run as the superuser) and
// returns a connection to it.
func checkDB(t *testing.T, c *pgcluster.Cluster, name, schema string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	if err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.DSN(c.SuperUser, c.SuperPassword, name, "sslmode=disable"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, schema, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("%v\n%s", err, schema)
	}
	return conn
}

// checkConfig writes a config for database db of c into dir.
func checkConfig(t *testing.T, c *pgcluster.Cluster, dir, file, db, rest string) string {
	t.Helper()
	path := filepath.Join(dir, file)
	head := fmt.Sprintf("listen: 127.0.0.1:0\nupstream: {address: %s, sslmode: disable}\ncatalog_dsn: postgres://%s@%s/%s?sslmode=disable\nkeys: {dir: keys/, kek: \"file:kek.json\"}\n",
		c.Addr(), c.SuperUser, c.Addr(), db)
	if err := os.WriteFile(path, []byte(head+rest), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// encryptFor encrypts plaintext under key with the keysets of cfgPath.
func encryptFor(t *testing.T, cfgPath, key, plaintext string) []byte {
	t.Helper()
	_, k := openKeys(t, cfgPath)
	env, err := k.Encrypt(key, []byte(plaintext))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// The seeded schema holds one of each problem check finds; the comment on
// each line names the finding it causes.
const seededSchema = `
CREATE TABLE patients (id int PRIMARY KEY, name text, ssn bytea, diagnosis bytea, dob bytea, mrn text, email bytea, tenant int,
  ssn_len int GENERATED ALWAYS AS (length(ssn)) STORED,           -- generated_from_phi
  name_len int GENERATED ALWAYS AS (length(name)) STORED);        -- fine
ALTER TABLE patients ALTER COLUMN email SET DEFAULT '\x00';      -- default_on_phi
ALTER TABLE patients ALTER COLUMN tenant SET DEFAULT 1;          -- fine
CREATE UNIQUE INDEX patients_ssn_key ON patients (ssn);                -- fine: equality on a deterministic column
CREATE INDEX patients_dx_idx ON patients (diagnosis);                  -- index_on_randomized
CREATE INDEX patients_ssn_hex_idx ON patients (encode(ssn, 'hex'));    -- index_expression_on_phi
CREATE INDEX patients_ssn_brin ON patients USING brin (ssn);           -- index_ordering_on_phi
CREATE INDEX patients_name_idx ON patients (name) INCLUDE (diagnosis); -- fine: an INCLUDE column is never searched
ALTER TABLE patients ADD CONSTRAINT phiproxy_dob_envelope
  CHECK (dob IS NULL OR substring(dob from 1 for 3) = decode('504801', 'hex'));   -- constraint_old_form
ALTER TABLE patients ADD CONSTRAINT dob_sane CHECK (length(dob) > 3);             -- check_on_phi
CREATE TABLE visits (id int PRIMARY KEY, patient_ssn bytea REFERENCES patients (ssn), at date); -- foreign_key_on_phi
CREATE TABLE labs (id int, result bytea) PARTITION BY RANGE (result);  -- partition_key_on_phi
CREATE VIEW v_ssn AS SELECT id, ssn FROM patients;                     -- view_reads_phi
CREATE VIEW v_plain AS SELECT id, name FROM patients;                  -- relation_not_table (declared in phi:)
CREATE VIEW v_names AS SELECT id, name FROM patients;                  -- fine
CREATE MATERIALIZED VIEW mv_dob AS SELECT dob FROM patients;           -- matview_reads_phi
CREATE FUNCTION find_patient(bytea) RETURNS int LANGUAGE sql AS 'SELECT id FROM patients WHERE ssn = $1'; -- function_reads_phi
CREATE PROCEDURE purge_patients() LANGUAGE sql AS 'DELETE FROM patients';  -- procedure_reads_phi
CREATE FUNCTION harmless() RETURNS int LANGUAGE sql AS 'SELECT 1';         -- fine
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER patients_touch BEFORE UPDATE ON patients FOR EACH ROW EXECUTE FUNCTION touch(); -- trigger_on_phi_table
CREATE TABLE labs_2024 PARTITION OF labs FOR VALUES FROM ('\x00') TO ('\xff');
CREATE INDEX labs_result_idx ON labs (result);  -- index_on_randomized, once (not again for the partition's index)
CREATE TRIGGER labs_touch BEFORE UPDATE ON labs_2024 FOR EACH ROW EXECUTE FUNCTION touch(); -- trigger_on_phi_table on a partition
CREATE TABLE deleted_log (id int);
CREATE RULE log_delete AS ON DELETE TO patients DO ALSO INSERT INTO deleted_log VALUES (OLD.id); -- rule_on_phi
ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_ssn ON patients USING (ssn IS NOT NULL);             -- policy_reads_phi
CREATE POLICY by_tenant ON patients USING (tenant = 1);                -- fine
INSERT INTO patients (id, diagnosis, mrn) VALUES (1, convert_to('dx-canary', 'UTF8'), 'mrn-canary'); -- column_plaintext twice
`

const seededPHI = `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic}
    diagnosis: {type: text, mode: randomized}
    dob:       {type: date, mode: randomized}
    mrn:       {type: int8, mode: deterministic}
    email:     {type: text, mode: randomized}
    nickname:  {type: text, mode: randomized, read: [{roles: [no_such_role_xyz], access: plaintext}]}
  public.labs:
    result: {type: text, mode: randomized}
  public.ghosts:
    x: {type: text, mode: randomized}
  public.v_plain:
    name: {type: text, mode: randomized}
`

func TestCheckFindsEachSeededProblemAndNothingOnACleanSchema(t *testing.T) {
	c := checkCluster(t)
	ctx := context.Background()
	dir := t.TempDir()

	t.Run("a seeded schema has each finding", func(t *testing.T) {
		conn := checkDB(t, c, "seeded", seededSchema)
		keysCfg := checkConfig(t, c, dir, "keys.yaml", "seeded", seededPHI)
		mustRun(t, "keys", "init", "--config", keysCfg)
		// The check's config adds a column whose key (visit_ssn) has no keyset.
		cfg := checkConfig(t, c, dir, "check.yaml", "seeded", seededPHI+
			"  public.visits:\n    patient_ssn: {type: text, mode: deterministic, key: visit_ssn}\n")
		ssnCol := config.Column{Schema: "public", Table: "patients", Name: "ssn"}
		emailCol := config.Column{Schema: "public", Table: "patients", Name: "email"}
		for _, q := range []string{crypto.EnvelopeCheckSQL(ssnCol), crypto.EnvelopeCheckSQL(emailCol)} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		// ssn under its first key, then rotated: values_old_key. email under a
		// key id no keyset holds: values_unknown_key.
		ssn := encryptFor(t, keysCfg, "public.patients.ssn", "123-45-6789")
		mustRun(t, "keys", "rotate", "--column", "public.patients.ssn", "--config", keysCfg)
		foreign := append(crypto.KeyPrefix(0xdeadbeef), make([]byte, 28)...)
		if _, err := conn.Exec(ctx, "UPDATE patients SET ssn = $1, email = $2 WHERE id = 1", ssn, foreign); err != nil {
			t.Fatal(err)
		}

		want := []string{
			"error column_missing column public.patients.nickname",
			"error column_not_bytea column public.patients.mrn",
			"error column_plaintext column public.patients.diagnosis",
			"error column_plaintext column public.patients.mrn",
			"error constraint_missing column public.labs.result",
			"error constraint_missing column public.patients.diagnosis",
			"error constraint_missing column public.visits.patient_ssn",
			"error default_on_phi column public.patients.email",
			"error foreign_key_on_phi foreign key visits_patient_ssn_fkey on public.visits",
			"error keyset_missing keyset visit_ssn",
			"error policy_reads_phi policy own_ssn on public.patients",
			"error relation_missing relation public.ghosts",
			"error relation_not_table relation public.v_plain",
			"error values_unknown_key column public.patients.email",
			"warning check_on_phi constraint dob_sane on public.patients",
			"warning constraint_old_form column public.patients.dob",
			"warning event_trigger_missing event trigger phiproxy_catalog_ddl",
			"warning function_reads_phi function public.find_patient(bytea)",
			"warning generated_from_phi column public.patients.ssn_len",
			"warning index_expression_on_phi index public.patients_ssn_hex_idx",
			"warning index_on_randomized index public.labs_result_idx",
			"warning index_on_randomized index public.patients_dx_idx",
			"warning index_ordering_on_phi index public.patients_ssn_brin",
			"warning matview_reads_phi materialized view public.mv_dob",
			"warning overlay_missing catalog overlay phiproxy_overlay",
			"warning partition_key_on_phi table public.labs",
			"warning procedure_reads_phi procedure public.purge_patients()",
			"warning role_missing role no_such_role_xyz",
			"warning rule_on_phi rule log_delete on public.patients",
			"warning trigger_on_phi_table trigger labs_touch on public.labs_2024",
			"warning trigger_on_phi_table trigger patients_touch on public.patients",
			"warning values_old_key column public.patients.ssn",
			"warning view_reads_phi view public.v_ssn",
		}
		// check only reads: the catalog is the same afterwards.
		shape := func() string {
			var s string
			if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_class) || '/' || (SELECT count(*) FROM pg_constraint) || '/' ||
  (SELECT count(*) FROM pg_event_trigger) || '/' || (SELECT count(*) FROM pg_namespace) || '/' || (SELECT count(*) FROM patients)`).Scan(&s); err != nil {
				t.Fatal(err)
			}
			return s
		}
		before := shape()
		defer func() {
			if after := shape(); after != before {
				t.Errorf("check changed the database: %s, then %s", before, after)
			}
		}()
		rep, code := checkJSON(t, cfg)
		var got []string
		for _, f := range rep.Findings {
			got = append(got, fmt.Sprintf("%s %s %s", f.Severity, f.Kind, f.Object))
			if f.Finding == "" || f.Fix == "" {
				t.Errorf("finding without text or fix: %+v", f)
			}
			// No value ever: the plaintext inserted, nor the ciphertext.
			for _, v := range []string{"canary", fmt.Sprintf("%x", ssn[8:16])} {
				if strings.Contains(f.Finding+f.Fix, v) {
					t.Errorf("finding holds a value %q: %+v", v, f)
				}
			}
		}
		sort.Strings(got)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if rep.Summary != (check.Summary{Errors: 14, Warnings: 19}) {
			t.Errorf("summary %+v", rep.Summary)
		}
		for _, f := range rep.Findings {
			switch f.Kind {
			case check.KindColumnPlaintext:
				if !strings.Contains(f.Fix, "phiproxy encrypt --config "+cfg+" --column public.patients.") {
					t.Errorf("plaintext fix: %q", f.Fix)
				}
				if f.Object == "column public.patients.diagnosis" && !strings.Contains(f.Finding, "1 of 1 sampled") {
					t.Errorf("plaintext finding: %q", f.Finding)
				}
			case check.KindConstraintMissing:
				if !strings.HasPrefix(f.Fix, "ALTER TABLE ") || !strings.Contains(f.Fix, " CHECK (") {
					t.Errorf("constraint fix: %q", f.Fix)
				}
			case check.KindValuesUnknownKey:
				if !strings.Contains(f.Finding, fmt.Sprint(uint32(0xdeadbeef))) {
					t.Errorf("unknown key finding does not name the key id: %q", f.Finding)
				}
			}
		}

		// The table: a header and one aligned row per finding, then the summary.
		table, code := checkRun(t, "--config", cfg)
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if code != 1 || !regexp.MustCompile(`^SEVERITY\s+OBJECT\s+FINDING\s+FIX$`).MatchString(lines[0]) ||
			len(lines) != len(want)+3 || lines[len(lines)-1] != "14 errors, 19 warnings" {
			t.Fatalf("table (exit %d):\n%s", code, table)
		}
		col := strings.Index(lines[0], "OBJECT")
		for _, l := range lines[1 : len(want)+1] {
			if !strings.HasPrefix(l[col:], "column ") && l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("row not aligned under OBJECT: %q", l)
			}
		}
	})

	t.Run("a clean schema has none", func(t *testing.T) {
		cleanDir := filepath.Join(dir, "clean")
		os.MkdirAll(cleanDir, 0o700)
		conn := checkDB(t, c, "clean", `
CREATE TABLE patients (id serial PRIMARY KEY, name text, ssn bytea, diagnosis bytea, dob bytea, tenant int);
CREATE UNIQUE INDEX ON patients (ssn);
CREATE TABLE visits (id serial PRIMARY KEY, patient_ssn bytea REFERENCES patients (ssn), visited_on date);
CREATE INDEX ON visits USING hash (patient_ssn);
CREATE VIEW v_names AS SELECT id, name FROM patients;
CREATE FUNCTION harmless() RETURNS int LANGUAGE sql AS 'SELECT 1';
ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON patients USING (tenant = 1);
`)
		cfg := checkConfig(t, c, cleanDir, "clean.yaml", "clean", `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic}
    diagnosis: {type: text, mode: randomized}
    dob:       {type: date, mode: randomized}
  public.visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn}
`)
		cfgObj, err := config.Load(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, col := range cfgObj.Columns() {
			if _, err := conn.Exec(ctx, crypto.EnvelopeCheckSQL(col)); err != nil {
				t.Fatal(err)
			}
		}
		mustRun(t, "keys", "init", "--config", cfg)
		ssn := encryptFor(t, cfg, "public.patients.ssn", "123-45-6789")
		if _, err := conn.Exec(ctx, "INSERT INTO patients (name, ssn, diagnosis, dob) VALUES ('x', $1, $2, $3)", ssn,
			encryptFor(t, cfg, "public.patients.diagnosis", "flu"), encryptFor(t, cfg, "public.patients.dob", "1980-01-02")); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO visits (patient_ssn, visited_on) VALUES ($1, current_date)", ssn); err != nil {
			t.Fatal(err)
		}

		// Before the overlay and the event triggers: those two only.
		rep, code := checkJSON(t, cfg)
		var kinds []string
		for _, f := range rep.Findings {
			kinds = append(kinds, f.Kind)
		}
		if code != 1 || strings.Join(kinds, " ") != "overlay_missing event_trigger_missing" {
			t.Fatalf("exit %d, findings %+v", code, rep.Findings)
		}

		mustRun(t, "overlay", "install", "--config", cfg)
		rep, code = checkJSON(t, cfg)
		if code != 0 || len(rep.Findings) != 0 || rep.Summary != (check.Summary{}) {
			t.Fatalf("exit %d, report %+v", code, rep)
		}
		out, code := checkRun(t, "--config", cfg)
		if code != 0 || !strings.HasPrefix(out, "no findings") {
			t.Fatalf("exit %d:\n%s", code, out)
		}

		// --dsn: a role that may read the catalog but not the tables gets
		// sample_failed for each column, and nothing else changes.
		if _, err := conn.Exec(ctx, "CREATE ROLE cat_only LOGIN PASSWORD 'cat-pw'"); err != nil {
			t.Fatal(err)
		}
		out, code = checkRun(t, "--config", cfg, "--format", "json", "--dsn", c.DSN("cat_only", "cat-pw", "clean", "sslmode=disable"))
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		var objs []string
		for _, f := range rep.Findings {
			if f.Kind != check.KindSampleFailed || !strings.Contains(f.Finding, "SQLSTATE 42501") {
				t.Errorf("as cat_only: %+v", f)
			}
			objs = append(objs, f.Object)
		}
		if code != 1 || len(objs) != 4 {
			t.Fatalf("as cat_only: exit %d, %v", code, objs)
		}

		// Keys that cannot be read are a finding; so is the foreign key
		// once visits.patient_ssn is left out of the PHI map.
		noKeys := checkConfig(t, c, t.TempDir(), "nokeys.yaml", "clean", "phi:\n  public.patients:\n    ssn: {type: text, mode: deterministic}\n")
		rep, code = checkJSON(t, noKeys)
		kinds = nil
		for _, f := range rep.Findings {
			kinds = append(kinds, f.Kind)
		}
		if code != 1 || strings.Join(kinds, " ") != "foreign_key_on_phi keys_unreadable overlay_stale" ||
			!strings.Contains(rep.Findings[0].Finding, "pairs PHI column public.patients.ssn (ciphertext) with non-PHI column public.visits.patient_ssn") {
			t.Fatalf("without keys: exit %d, %+v", code, rep.Findings)
		}
	})

	t.Run("an observed column is a warning, whatever its type", func(t *testing.T) {
		checkDB(t, c, "observed", `CREATE TABLE patients (id serial PRIMARY KEY, ssn text, dob date, diagnosis bytea);
INSERT INTO patients (ssn, dob) VALUES ('canary-ssn', '1980-01-02');`)
		cfg := checkConfig(t, c, t.TempDir(), "observed.yaml", "observed", `phi:
  public.patients:
    ssn: {type: text, mode: deterministic, enforce: observe}
    dob: {type: date, mode: randomized, enforce: observe}
`)
		mustRun(t, "keys", "init", "--config", cfg)
		rep, code := checkJSON(t, cfg)
		var got []string
		for _, f := range rep.Findings {
			if f.Kind == check.KindColumnObserved {
				got = append(got, f.Object)
				if !strings.Contains(f.Finding, "unprotected") || !strings.Contains(f.Fix, "phiproxy observe report") || strings.Contains(f.Finding, "canary") {
					t.Errorf("observed finding: %+v", f)
				}
				continue
			}
			if f.Severity == check.Error {
				t.Errorf("an observed plaintext column is not an error: %+v", f)
			}
		}
		sort.Strings(got)
		if code != 1 || strings.Join(got, " ") != "column public.patients.dob column public.patients.ssn" {
			t.Fatalf("exit %d, observed findings %v (all: %+v)", code, got, rep.Findings)
		}
	})
}

package phi

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/observe"
)

// observeCfg is the test config plus patients_plain's columns in
// enforce: observe (plaintext text and date columns), audited, with its
// state in a fresh directory.
func observeCfg(t *testing.T) (*config.Config, string) {
	t.Helper()
	doc, err := os.ReadFile(testCfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	doc = append(doc, `  public.patients_plain:
    ssn:       {type: text, mode: deterministic, enforce: observe, default: plaintext}
    diagnosis: {type: text, mode: randomized, enforce: observe, default: plaintext}
    dob:       {type: date, mode: randomized, enforce: observe, default: plaintext}
`...)
	path := filepath.Join(filepath.Dir(testCfg.Path), "observe.yaml")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := crypto.OpenStore(context.Background(), cfg.Keys, crypto.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAll(cfg, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Audit = config.Audit{Mode: config.AuditStrict, Instance: "px-test",
		File: config.AuditFile{Dir: filepath.Join(dir, "audit"), CheckpointEvery: 1000, CheckpointInterval: time.Minute, MaxFileBytes: 1 << 20}}
	return cfg, dir
}

func TestObserveForwardsUnchangedAndRecordsVerdicts(t *testing.T) {
	cfg, dir := observeCfg(t)
	p := startAudited(t, cfg, dir)
	ctx := testCtx(t)
	simple := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	ext := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)

	mustExec := func(c *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := c.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	mustExec(simple, `INSERT INTO patients_plain (id, name, ssn, diagnosis, dob) VALUES (1, 'Ann', 'canary-ssn-1', 'canary-dx-1', '1980-01-02')`)
	mustExec(ext, `INSERT INTO patients_plain (id, name, ssn, diagnosis, dob) VALUES ($1, $2, $3, $4, $5)`, 2, "Bob", "canary-ssn-2", "canary-dx-2", "1990-03-04")
	// The on part of a mixed statement is enforced: patients.ssn is
	// encrypted, patients_plain.ssn stays plaintext.
	mustExec(ext, `INSERT INTO patients (id, name, ssn) VALUES ($1, $2, $3)`, 1, "Ann", "canary-ssn-1")

	raw := func(c *pgx.Conn, sql string, args ...any) [][]byte {
		t.Helper()
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		defer rows.Close()
		var out [][]byte
		for rows.Next() {
			for _, v := range rows.RawValues() {
				out = append(out, append([]byte(nil), v...))
			}
		}
		if rows.Err() != nil {
			t.Fatalf("%s: %v", sql, rows.Err())
		}
		return out
	}
	for _, q := range []string{
		`SELECT id, ssn, diagnosis, dob FROM patients_plain ORDER BY id`,
		`SELECT ssn FROM patients_plain ORDER BY ssn`,
		`SELECT id FROM patients_plain WHERE diagnosis LIKE 'canary-dx%' ORDER BY id`,
		`SELECT * FROM patients_plain WHERE ssn = 'canary-ssn-2'`,
	} {
		if got, want := raw(simple, q), raw(direct, q); !equalRows(got, want) || len(want) == 0 {
			t.Errorf("%s: through the proxy %q, direct %q", q, got, want)
		}
	}
	for i := 0; i < 3; i++ {
		if got := raw(ext, `SELECT ssn, dob FROM patients_plain WHERE ssn = $1`, "canary-ssn-1"); len(got) != 2 || string(got[0]) != "canary-ssn-1" {
			t.Fatalf("extended protocol on an observed column: %q", got)
		}
	}
	mixed := raw(simple, `SELECT p.ssn, q.ssn FROM patients p JOIN patients_plain q ON q.id = p.id WHERE p.ssn = 'canary-ssn-1'`)
	if len(mixed) != 2 || string(mixed[0]) != "canary-ssn-1" || string(mixed[1]) != "canary-ssn-1" {
		t.Fatalf("mixed statement: %q", mixed)
	}
	if got := raw(direct, `SELECT substr(ssn::text, 1, 8) FROM patients WHERE id = 1`); len(got) != 1 || string(got[0]) != `\x504801` {
		t.Fatalf("the enforced column of the mixed workload is not ciphertext: %q", got)
	}

	// COPY in both directions on an observed relation: unchanged.
	if n, err := ext.CopyFrom(ctx, pgx.Identifier{"patients_plain"}, []string{"id", "name", "ssn"}, pgx.CopyFromRows([][]any{{3, "Cy", "canary-ssn-3"}})); err != nil || n != 1 {
		t.Fatalf("COPY FROM: %d %v", n, err)
	}
	var copied bytes.Buffer
	if _, err := simple.PgConn().CopyTo(ctx, &copied, "COPY (SELECT ssn FROM patients_plain WHERE id = 3) TO STDOUT"); err != nil || copied.String() != "canary-ssn-3\n" {
		t.Fatalf("COPY TO: %q %v", copied.String(), err)
	}

	p.phi.FlushCoverage()
	path := filepath.Join(cfg.StateDir, observe.FileName)
	f, err := observe.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	byQuery := map[string]observe.Record{}
	for _, r := range f.Records {
		byQuery[r.Query] = r
	}
	want := map[string]string{
		`INSERT INTO patients_plain (id, name, ssn, diagnosis, dob) VALUES ($1, $2, $3, $4, $5)`:    observe.Works,
		`SELECT id, ssn, diagnosis, dob FROM patients_plain ORDER BY id`:                            observe.Works,
		`SELECT ssn FROM patients_plain ORDER BY ssn`:                                               "0A000",
		`SELECT id FROM patients_plain WHERE diagnosis LIKE $1 ORDER BY id`:                         "0A000",
		`SELECT * FROM patients_plain WHERE ssn = $1`:                                               observe.Works,
		`SELECT ssn, dob FROM patients_plain WHERE ssn = $1`:                                        observe.Works,
		`SELECT p.ssn, q.ssn FROM patients p JOIN patients_plain q ON q.id = p.id WHERE p.ssn = $1`: observe.Works,
		`copy "patients_plain" ( "id", "name", "ssn" ) from stdin binary`:                           observe.Works,
		`COPY (SELECT ssn FROM patients_plain WHERE id = $1) TO STDOUT`:                             observe.Works,
	}
	for q, v := range want {
		r, ok := byQuery[q]
		got := r.Verdict
		if r.Verdict == observe.Refused {
			got = r.SQLSTATE
		}
		if !ok || got != v {
			t.Errorf("%s: record %+v, want %s", q, r, v)
		}
	}
	if len(f.Records) != len(want) {
		for _, r := range f.Records {
			t.Logf("record: %s %s %s", r.Verdict, r.SQLSTATE, r.Query)
		}
		t.Errorf("%d records, want %d", len(f.Records), len(want))
	}
	if r := byQuery[`SELECT ssn FROM patients_plain ORDER BY ssn`]; !strings.Contains(r.Hint, "order") || strings.Join(r.Columns, ",") != "public.patients_plain.ssn" {
		t.Errorf("ORDER BY refusal: %+v", r)
	}
	// A would-refuse is the refusal enforcement gives: the same statement
	// on the enforced twin (patients: same columns, types and modes, as
	// bytea) is refused with the same SQLSTATE, message and hint.
	for q, twin := range map[string]string{
		`SELECT ssn FROM patients_plain ORDER BY ssn`:                       `SELECT ssn FROM patients ORDER BY ssn`,
		`SELECT id FROM patients_plain WHERE diagnosis LIKE $1 ORDER BY id`: `SELECT id FROM patients WHERE diagnosis LIKE 'canary-dx%' ORDER BY id`,
	} {
		_, err := simple.Exec(ctx, twin)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Fatalf("%s on the enforced twin: %v", twin, err)
		}
		r := byQuery[q]
		if pe.Code != r.SQLSTATE || pe.Hint != r.Hint || strings.ReplaceAll(r.Message, "patients_plain", "patients") != pe.Message {
			t.Errorf("%s reported as %s %q %q; enforced: %s %q %q", q, r.SQLSTATE, r.Message, r.Hint, pe.Code, pe.Message, pe.Hint)
		}
	}
	if r := byQuery[`SELECT ssn, dob FROM patients_plain WHERE ssn = $1`]; r.Count != 3 || strings.Join(r.Params, ",") != "$1 public.patients_plain.ssn" || len(r.Results) != 2 {
		t.Errorf("extended statement: %+v", r)
	}
	if r := byQuery[`SELECT p.ssn, q.ssn FROM patients p JOIN patients_plain q ON q.id = p.id WHERE p.ssn = $1`]; strings.Join(r.Columns, ",") != "public.patients_plain.ssn" {
		t.Errorf("mixed statement reports its observed columns only: %+v", r)
	}
	// Canary: no value in the records or the audit trail.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte("canary")) || bytes.Contains(data, []byte("1980")) {
		t.Errorf("a value in %s:\n%s", path, data)
	}
	var observed int
	for _, ev := range trailEvents(t, cfg.Audit.File.Dir) {
		line, _ := ev.Marshal()
		if bytes.Contains(line, []byte("canary")) {
			t.Errorf("a value in an audit event: %s", line)
		}
		if ev.Action == audit.ActionObserve {
			observed++
		}
	}
	if observed != len(want) {
		t.Errorf("%d observe events, want one per fingerprint (%d)", observed, len(want))
	}
}

func equalRows(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func TestObserveUnreadableRecordsAreKeptAside(t *testing.T) {
	cfg, dir := observeCfg(t)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfg.StateDir, observe.FileName)
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startAudited(t, cfg, dir)
	ctx := testCtx(t)
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx, "SELECT ssn FROM patients_plain"); err != nil {
		t.Fatal(err)
	}
	p.phi.FlushCoverage()
	f, err := observe.ReadFile(path)
	if err != nil || len(f.Records) != 1 {
		t.Fatalf("records after an unreadable file: %v %+v", err, f)
	}
	aside, _ := filepath.Glob(path + ".unreadable-*")
	if len(aside) != 1 {
		t.Fatalf("the unreadable file is not kept aside: %v", aside)
	}
}

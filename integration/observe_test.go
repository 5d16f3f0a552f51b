package integration

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/observe"
)

// Observe mode end to end: the columns of patients are plaintext in
// enforce: observe, labs.result is encrypted (enforce: on), and a
// workload of psql, pgx in both protocols and database/sql (the stack
// ORMs and sqlc sit on) goes through the real binary. Reads of the
// observed columns are byte-identical to direct; the report lists
// exactly the statement shapes sent, with the verdict the planner gives.

const observeDB = "observed"

const observeSchema = `
CREATE TABLE patients (id int PRIMARY KEY, name text, ssn text, diagnosis text, dob date);
CREATE TABLE labs (id int PRIMARY KEY, patient_id int, result bytea);
`

const observePHI = `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic, enforce: observe, default: plaintext}
    diagnosis: {type: text, mode: randomized, enforce: observe, default: plaintext}
    dob:       {type: date, mode: randomized, enforce: observe, default: plaintext}
  public.labs:
    result:    {type: text, mode: randomized, default: plaintext}
`

// observeReads are compared through the proxy and direct (psql).
const observeReads = `
SELECT id, name, ssn, diagnosis, dob FROM patients ORDER BY id;
SELECT id FROM patients WHERE ssn = 'canary-obs-ssn-2';
SELECT id, ssn FROM patients ORDER BY ssn;
SELECT count(*) FROM patients WHERE diagnosis LIKE 'canary-obs%';
SELECT upper(ssn) FROM patients WHERE id = 1;
`

func TestObserveModeWorkloadAndReport(t *testing.T) {
	e := fixture
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := e.cluster.Exec(ctx, "CREATE DATABASE "+observeDB+" OWNER app"); err != nil {
		t.Fatal(err)
	}
	ddl := withEnvelopeChecks(observeSchema, []config.Column{{Schema: "public", Table: "labs", Name: "result"}})
	if err := execAsApp(ctx, observeDB, ddl); err != nil {
		t.Fatal(err)
	}
	extra, err := createKeys(ctx, filepath.Join(t.TempDir(), "keys"), observeDB, observePHI, "")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, proxyOpts{extra: extra, catalogDB: observeDB})
	via := appDSN(p.addr(), observeDB)
	direct := appDSN(e.cluster.Addr(), observeDB)

	// psql writes with literals through the proxy, then reads the same
	// script through the proxy and direct.
	if out, err := psql(t, via+"&application_name=psql-app", "-v", "ON_ERROR_STOP=1", "-c",
		"INSERT INTO patients VALUES (1, 'Ann', 'canary-obs-ssn-1', 'canary-obs-dx-1', '1980-01-02'), (2, 'Bob', 'canary-obs-ssn-2', 'canary-obs-dx-2', '1990-03-04')"); err != nil {
		t.Fatalf("psql insert: %v\n%s", err, out)
	}
	script := tempFile(t, "reads.sql", observeReads)
	read := func(dsn string) string {
		out, err := psql(t, dsn, "-A", "-v", "ON_ERROR_STOP=1", "-f", script)
		if err != nil {
			t.Fatalf("psql reads: %v\n%s", err, out)
		}
		return out
	}
	got, want := read(via+"&application_name=psql-app"), read(direct)
	if got != want || !strings.Contains(got, "canary-obs-ssn-1") {
		t.Fatalf("psql through the proxy differs from direct:\n%s\ndirect:\n%s", got, want)
	}

	// pgx, both protocols: raw result bytes compared with direct.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		cv := testenv.Connect(t, ctx, via+"&application_name=pgx-app", func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = mode })
		cd := testenv.Connect(t, ctx, direct, func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = mode })
		for _, q := range []string{
			"SELECT id, ssn, diagnosis, dob FROM patients WHERE ssn = $1",
			"SELECT dob FROM patients WHERE dob > $1::date ORDER BY dob",
		} {
			arg := any("canary-obs-ssn-1")
			if strings.Contains(q, "dob >") {
				arg = "1970-01-01"
			}
			a, b := rawRows(t, ctx, cv, q, arg), rawRows(t, ctx, cd, q, arg)
			if !bytes.Equal(a, b) || len(a) == 0 {
				t.Errorf("%v %s: through the proxy %q, direct %q", mode, q, a, b)
			}
		}
		// Mixed: the on column is encrypted by the proxy, the observed
		// one stays plaintext.
		if _, err := cv.Exec(ctx, "INSERT INTO labs (id, patient_id, result) VALUES ($1, $2, $3)", int(mode), 1, "canary-obs-lab"); err != nil {
			t.Fatal(err)
		}
		var ssn, result string
		if err := cv.QueryRow(ctx, "SELECT p.ssn, l.result FROM patients p JOIN labs l ON l.patient_id = p.id WHERE l.id = $1", int(mode)).Scan(&ssn, &result); err != nil {
			t.Fatal(err)
		}
		if ssn != "canary-obs-ssn-1" || result != "canary-obs-lab" {
			t.Fatalf("mixed statement: %q %q", ssn, result)
		}
	}
	var hdr string
	if err := testenv.Connect(t, ctx, direct, nil).QueryRow(ctx, "SELECT DISTINCT substr(result::text, 1, 8) FROM labs").Scan(&hdr); err != nil || hdr != `\x504801` {
		t.Fatalf("labs.result (enforce: on) direct: %q %v", hdr, err)
	}

	// database/sql, as an ORM or sqlc uses it: prepared statements.
	db, err := sql.Open("pgx", via+"&application_name=orm-app")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "UPDATE patients SET diagnosis = $1 WHERE ssn = $2", "canary-obs-dx-3", "canary-obs-ssn-2"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM patients WHERE diagnosis = $1", "canary-obs-dx-3").Scan(&n); err != nil || n != 1 {
		t.Fatalf("orm count: %d %v", n, err)
	}

	// SIGTERM: the proxy drains and writes its records.
	p.shutdown(t)

	out, code := runReport(t, p.config, "json")
	if code != 1 {
		t.Fatalf("observe report: exit %d, want 1 (refusals)\n%s", code, out)
	}
	var rep observe.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]string{}
	apps := map[string]string{}
	for _, r := range rep.Rows {
		v := r.Verdict
		if v == observe.Refused {
			v = r.SQLSTATE
		}
		// pgx's simple protocol spaces the values it inlines.
		q := strings.Join(strings.Fields(r.Query), " ")
		verdicts[q] = v
		apps[q] = strings.Join(r.Applications, ",")
	}
	expect := map[string]string{
		"INSERT INTO patients VALUES ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)":                   observe.Works,
		"SELECT id, name, ssn, diagnosis, dob FROM patients ORDER BY id":                            observe.Works,
		"SELECT id FROM patients WHERE ssn = $1":                                                    observe.Works,
		"SELECT id, ssn FROM patients ORDER BY ssn":                                                 "0A000",
		"SELECT count(*) FROM patients WHERE diagnosis LIKE $1":                                     "0A000",
		"SELECT upper(ssn) FROM patients WHERE id = $1":                                             "0A000",
		"SELECT id, ssn, diagnosis, dob FROM patients WHERE ssn = $1":                               observe.Works,
		"SELECT dob FROM patients WHERE dob > $1 ::date ORDER BY dob":                               "0A000",
		"SELECT p.ssn, l.result FROM patients p JOIN labs l ON l.patient_id = p.id WHERE l.id = $1": observe.Works,
		"UPDATE patients SET diagnosis = $1 WHERE ssn = $2":                                         observe.Works,
		"SELECT count(*) FROM patients WHERE diagnosis = $1":                                        "0A000",
	}
	var keys []string
	for q := range verdicts {
		keys = append(keys, q)
	}
	sort.Strings(keys)
	for q, v := range expect {
		if verdicts[q] != v {
			t.Errorf("%s: reported %q, want %q", q, verdicts[q], v)
		}
	}
	if len(rep.Summary.Columns) != 3 || rep.Summary.Shapes != len(expect) || t.Failed() {
		t.Errorf("summary %+v; shapes seen:\n%s", rep.Summary, strings.Join(keys, "\n"))
	}
	if a := apps["SELECT id FROM patients WHERE ssn = $1"]; a != "psql-app" {
		t.Errorf("applications of the psql lookup: %q", a)
	}
	if a := apps["UPDATE patients SET diagnosis = $1 WHERE ssn = $2"]; a != "orm-app" {
		t.Errorf("applications of the ORM update: %q", a)
	}

	// Canary: no value in the records, any report or the audit trail.
	dir := filepath.Dir(p.config)
	reports := out
	for _, f := range []string{"table", "csv", "html"} {
		o, _ := runReport(t, p.config, f)
		reports += o
	}
	files := []string{filepath.Join(dir, "state", observe.FileName)}
	auditFiles, _ := filepath.Glob(filepath.Join(dir, "audit", "*"))
	files = append(files, auditFiles...)
	var observeEvents int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		observeEvents += bytes.Count(b, []byte(`"action":"observe"`))
		reports += string(b)
	}
	if len(auditFiles) == 0 || observeEvents < len(expect) {
		t.Errorf("%d audit files, %d observe events; want one per shape (%d)", len(auditFiles), observeEvents, len(expect))
	}
	for _, canary := range []string{"canary-obs", "1980-01-02", "1990-03-04"} {
		if strings.Contains(reports, canary) {
			t.Errorf("value %q in the records, a report or the audit trail", canary)
		}
	}
	observeScreenshot(t, p.config)

	// The next step of adoption: encrypt ssn and switch it to on. The
	// refusal the report predicted is now the proxy's, word for word.
	if out, code := phiproxyCmd(t, "encrypt", "--config", p.config, "--column", "public.patients.ssn"); code != 0 {
		t.Fatalf("phiproxy encrypt: exit %d\n%s", code, out)
	}
	on := strings.Replace(extra, "ssn:       {type: text, mode: deterministic, enforce: observe,", "ssn:       {type: text, mode: deterministic,", 1)
	if on == extra {
		t.Fatal("BUG: ssn not switched on")
	}
	p2 := startProxy(t, proxyOpts{extra: on, catalogDB: observeDB})
	c2 := testenv.Connect(t, ctx, appDSN(p2.addr(), observeDB), nil)
	var ssn string
	if err := c2.QueryRow(ctx, "SELECT ssn FROM patients WHERE ssn = $1", "canary-obs-ssn-2").Scan(&ssn); err != nil || ssn != "canary-obs-ssn-2" {
		t.Fatalf("ssn after encrypt, through the proxy: %q %v", ssn, err)
	}
	if err := testenv.Connect(t, ctx, direct, nil).QueryRow(ctx, "SELECT DISTINCT substr(ssn::text, 1, 8) FROM patients").Scan(&hdr); err != nil || hdr != `\x504801` {
		t.Fatalf("ssn after encrypt, direct: %q %v", hdr, err)
	}
	_, err = c2.Exec(ctx, "SELECT id, ssn FROM patients ORDER BY ssn")
	var pe *pgconn.PgError
	var predicted observe.Row
	for _, r := range rep.Rows {
		if r.Query == "SELECT id, ssn FROM patients ORDER BY ssn" {
			predicted = r
		}
	}
	if !errors.As(err, &pe) || pe.Code != predicted.SQLSTATE || pe.Message != predicted.Message || pe.Hint != predicted.Hint {
		t.Errorf("enforced: %v; the report predicted %s %q %q", err, predicted.SQLSTATE, predicted.Message, predicted.Hint)
	}
}

// rawRows returns the raw bytes of every value of q's rows, joined.
func rawRows(t *testing.T, ctx context.Context, c *pgx.Conn, q string, args ...any) []byte {
	t.Helper()
	rows, err := c.Query(ctx, q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var b bytes.Buffer
	for rows.Next() {
		for _, v := range rows.RawValues() {
			fmt.Fprintf(&b, "%d:%s|", len(v), v)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return b.Bytes()
}

// runReport runs `phiproxy observe report` and returns stdout and the
// exit code.
func runReport(t *testing.T, cfg, format string) (string, int) {
	t.Helper()
	cmd := exec.Command(fixture.binary, "observe", "report", "--config", cfg, "--format", format)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return stdout.String(), cmd.ProcessState.ExitCode()
}

// observeScreenshot renders the HTML report of cfg in headless Chromium
// (Debian's chromium): the page it lays out has the summary and the top
// refusal, and a screenshot is taken (kept in OBSERVE_SCREENSHOT when
// set, for a person to look at).
func observeScreenshot(t *testing.T, cfg string) {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the HTML report is checked in Debian's chromium (apt-get install chromium): %v", err)
	}
	page, _ := runReport(t, cfg, "html")
	dir := t.TempDir()
	html := filepath.Join(dir, "report.html")
	if err := os.WriteFile(html, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	png := filepath.Join(dir, "report.png")
	if s := os.Getenv("OBSERVE_SCREENSHOT"); s != "" {
		png = s
	}
	chromium := func(args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + filepath.Join(dir, "profile")}
		cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, errb.String())
		}
		return out.Bytes()
	}
	// The DOM Chromium built: summary cards, the headline and the
	// refusals table, the most frequent refusal first.
	dom := string(chromium("--dump-dom", "file://"+html))
	for _, want := range []string{`id="headline"`, "would be refused once enforced", `id="refused"`, "ciphertext has no order", "0A000"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	chromium("--window-size=1280,1600", "--screenshot="+png, "file://"+html)
	b, err := os.ReadFile(png)
	if err != nil || len(b) < 10000 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s: %d bytes, %v", png, len(b), err)
	}
}

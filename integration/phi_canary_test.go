package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// canary is one client's set of unique PHI values.
type canary struct {
	client string
	id     int
	ssn    string // patients.ssn and visits.patient_ssn (deterministic, shared key)
	diag   string // patients.diagnosis (randomized)
	dob    string // patients.dob (date, randomized)
	mrn    int64  // patients.mrn (int8, deterministic)
}

func (c canary) readback() string {
	return fmt.Sprintf("%s|%s|%s|%d|%s", c.ssn, c.diag, c.dob, c.mrn, c.ssn)
}

// needles are every plaintext form a value could take on disk or in a log.
func (c canary) needles() map[string][]byte {
	le, be := make([]byte, 8), make([]byte, 8)
	binary.LittleEndian.PutUint64(le, uint64(c.mrn))
	binary.BigEndian.PutUint64(be, uint64(c.mrn))
	return map[string][]byte{
		c.client + " ssn":                 []byte(c.ssn),
		c.client + " diagnosis":           []byte(c.diag),
		c.client + " dob":                 []byte(c.dob),
		c.client + " mrn (text)":          []byte(strconv.FormatInt(c.mrn, 10)),
		c.client + " mrn (int8, little)":  le,
		c.client + " mrn (int8, big)":     be,
		c.client + " ssn (hex, as bytea)": []byte(hex.EncodeToString([]byte(c.ssn))),
	}
}

func randomInt(t *testing.T, max int64) int64 {
	n, err := rand.Int(rand.Reader, big.NewInt(max))
	if err != nil {
		t.Fatal(err)
	}
	return n.Int64()
}

func newCanary(t *testing.T, client string, id int) canary {
	tag := make([]byte, 8)
	rand.Read(tag)
	h := hex.EncodeToString(tag)
	day := time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, int(randomInt(t, 36000)))
	return canary{
		client: client, id: id,
		ssn:  "CANARY-SSN-" + h,
		diag: "CANARY-DX-" + h,
		dob:  day.Format("2006-01-02"),
		mrn:  1e17 + randomInt(t, 8e17),
	}
}

// TestPHICanaryNeverReachesDiskOrLogs writes unique values into every PHI
// column through the proxy with every client, forces them to disk, and scans
// every byte PostgreSQL keeps (heap, WAL, logs, everything under the cluster
// directory) and every byte the proxy wrote: no canary may appear. Controls
// prove the scans can find what they look for.
func TestPHICanaryNeverReachesDiskOrLogs(t *testing.T) {
	p := startPHIProxy(t)
	e := fixture
	dsn := appDSN(p.addr(), phiDB)
	jdbcURL := "jdbc:postgresql://" + p.addr() + "/" + phiDB + "?sslmode=disable"
	writers := []struct {
		name  string
		write func(t *testing.T, c canary) string
	}{
		{"psql", func(t *testing.T, c canary) string {
			out, err := psql(t, dsn, "-A", "-t", "-q",
				"-c", fmt.Sprintf("INSERT INTO patients (id, name, ssn, diagnosis, dob, mrn, secret) VALUES (%d, 'canary-psql', '%s', '%s', '%s', %d, '%s')",
					c.id, c.ssn, c.diag, c.dob, c.mrn, c.diag+"-SECRET"),
				"-c", fmt.Sprintf("INSERT INTO visits (id, patient_ssn) VALUES (%d, '%s')", c.id, c.ssn),
				"-c", fmt.Sprintf("SELECT p.ssn, p.diagnosis, p.dob, p.mrn, v.patient_ssn FROM patients p JOIN visits v ON v.patient_ssn = p.ssn WHERE p.ssn = '%s'", c.ssn))
			if err != nil {
				t.Fatalf("psql: %v\n%s", err, out)
			}
			return out
		}},
		{"node-postgres", func(t *testing.T, c canary) string {
			return runCmd(t, "node", "clients/node/crud.js", "canary", dsn, strconv.Itoa(c.id), c.ssn, c.diag, c.dob, strconv.FormatInt(c.mrn, 10))
		}},
		{"psycopg", func(t *testing.T, c canary) string {
			return runCmd(t, pythonBin, "clients/python/crud.py", "canary", dsn, strconv.Itoa(c.id), c.ssn, c.diag, c.dob, strconv.FormatInt(c.mrn, 10))
		}},
		{"JDBC", func(t *testing.T, c canary) string {
			return jdbc(t, "PhiCrud", "canary", jdbcURL, "app", "app-pw", strconv.Itoa(c.id), c.ssn, c.diag, c.dob, strconv.FormatInt(c.mrn, 10))
		}},
		{"JDBC prepareThreshold=1", func(t *testing.T, c canary) string {
			return jdbc(t, "PhiCrud", "canary", jdbcURL+"&prepareThreshold=1", "app", "app-pw", strconv.Itoa(c.id), c.ssn, c.diag, c.dob, strconv.FormatInt(c.mrn, 10))
		}},
	}
	var canaries []canary
	for i, w := range writers {
		c := newCanary(t, w.name, 9001+i)
		canaries = append(canaries, c)
		got := strings.TrimSpace(w.write(t, c))
		if got != c.readback() {
			t.Fatalf("%s: read back through the proxy %q, want %q", w.name, got, c.readback())
		}
	}
	assertCiphertext(t, 9000, 9099)

	// What reaches the audit trail (beside the config, the default
	// audit.file.dir): a refusal, a server error that echoes ciphertext (a
	// unique violation on a deterministic column: PostgreSQL's DETAIL
	// holds the key), parameters (node-postgres, psycopg, JDBC above),
	// COPY both ways, and a sqlcommenter tag that is not allow-listed.
	c0 := canaries[0]
	commentCanary := "CANARY-COMMENT-" + c0.ssn
	ctx := t.Context()
	direct := phiDirect(t)
	if _, err := direct.Exec(ctx, "CREATE UNIQUE INDEX canary_visits_ssn ON visits (patient_ssn)"); err != nil {
		t.Fatal(err)
	}
	defer direct.Exec(context.Background(), "DROP INDEX IF EXISTS canary_visits_ssn")
	for _, step := range []struct{ sql, code string }{
		{fmt.Sprintf("/*patient='%s',device_id='ward-3'*/ SELECT ssn FROM patients WHERE ssn = '%s'", commentCanary, c0.ssn), ""},
		{fmt.Sprintf("SELECT ssn FROM patients WHERE ssn LIKE '%s%%'", c0.ssn), "0A000"},
		{fmt.Sprintf("INSERT INTO visits (id, patient_ssn) VALUES (9998, '%s')", c0.ssn), "23505"},
		{fmt.Sprintf("COPY (SELECT ssn, diagnosis FROM patients WHERE ssn = '%s') TO STDOUT", c0.ssn), ""},
		{"COPY visits (id, patient_ssn) FROM STDIN", ""},
	} {
		var out string
		var err error
		if strings.HasPrefix(step.sql, "COPY visits") {
			out, err = psqlStdin(t, dsn, fmt.Sprintf("9997\t%s\n\\.\n", c0.ssn+"-COPYIN"), "-c", step.sql)
		} else {
			out, err = psql(t, dsn, "-A", "-t", "-q", "-v", "VERBOSITY=verbose", "-c", step.sql)
		}
		if step.code == "" && err != nil {
			t.Fatalf("%s: %v\n%s", step.sql, err, out)
		}
		if step.code != "" && (err == nil || !strings.Contains(out, step.code)) {
			t.Fatalf("%s: want %s, got %v\n%s", step.sql, step.code, err, out)
		}
		if strings.Contains(out, "\\x") {
			t.Fatalf("%s: ciphertext reached the client:\n%s", step.sql, out)
		}
	}

	// Controls: a value in a non-PHI column, written through the proxy,
	// must be found on disk; an application_name must be found in the
	// proxy's log. Without them a scan that reads nothing would pass.
	control := "CANARY-CONTROL-" + newCanary(t, "control", 0).ssn
	appName := "CANARY-APPNAME-" + newCanary(t, "control", 0).ssn
	if out, err := psql(t, dsn+"&application_name="+appName, "-c", fmt.Sprintf("UPDATE patients SET note = '%s' WHERE id = %d", control, canaries[0].id)); err != nil {
		t.Fatalf("control write: %v\n%s", err, out)
	}

	if err := e.cluster.Exec(t.Context(), "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	needles := map[string][]byte{}
	for _, c := range canaries {
		for k, v := range c.needles() {
			needles[k] = v
		}
	}
	needles["psql secret (default: deny)"] = []byte(canaries[0].diag + "-SECRET")
	needles["control: non-PHI column"] = []byte(control)
	needles["control: application_name"] = []byte(appName)
	needles["comment tag (not allow-listed)"] = []byte(commentCanary)
	needles["COPY FROM value"] = []byte(c0.ssn + "-COPYIN")
	// An audit event of the canary workload must be in what the proxy
	// wrote: else the scan of the trail proves nothing.
	needles["control: audit event"] = []byte(`"columns":["public.patients.diagnosis","public.patients.dob","public.patients.mrn","public.patients.secret","public.patients.ssn"]`)

	clusterHits, files, size := scanTree(t, e.cluster.Dir, needles)
	proxyHits, pfiles, _ := scanTree(t, filepath.Dir(p.config), needles)
	for k, v := range scanBytes("proxy stdout/stderr", p.out.Bytes(), needles) {
		proxyHits[k] = append(proxyHits[k], v...)
	}
	t.Logf("scanned %d files (%d MiB) under the cluster directory and %d files beside the proxy config, plus %d bytes of proxy output",
		files, size>>20, pfiles, len(p.out.Bytes()))
	if files == 0 || len(clusterHits["control: non-PHI column"]) == 0 {
		t.Fatalf("control: the value written to a non-PHI column was not found under %s: the scan is broken", e.cluster.Dir)
	}
	if len(proxyHits["control: audit event"]) == 0 {
		t.Fatalf("control: no audit event of the canary workload under %s: the trail is not written or not scanned", filepath.Dir(p.config))
	}
	if len(proxyHits["control: application_name"]) == 0 {
		t.Fatalf("control: the application_name was not found in the proxy's output: the scan is broken")
	}
	for k, where := range clusterHits {
		// The comment is the application's text: PostgreSQL gets and may log
		// it as sent; only the proxy's own records must not hold it.
		if !strings.HasPrefix(k, "control") && !strings.HasPrefix(k, "comment") {
			t.Errorf("canary %s found in PostgreSQL's files: %v", k, where)
		}
	}
	for k, where := range proxyHits {
		if !strings.HasPrefix(k, "control") {
			t.Errorf("canary %s found in what the proxy wrote: %v", k, where)
		}
	}
}

// scanTree reads every regular file under root and reports which needles
// each contains.
func scanTree(t *testing.T, root string, needles map[string][]byte) (hits map[string][]string, files int, size int64) {
	t.Helper()
	hits = map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) { // a file PostgreSQL removed meanwhile
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		files++
		size += int64(len(b))
		rel, _ := filepath.Rel(root, path)
		for k, v := range scanBytes(rel, b, needles) {
			hits[k] = append(hits[k], v...)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scanning %s: %v", root, err)
	}
	return hits, files, size
}

func scanBytes(name string, b []byte, needles map[string][]byte) map[string][]string {
	hits := map[string][]string{}
	for k, n := range needles {
		if bytes.Contains(b, n) {
			hits[k] = append(hits[k], name)
		}
	}
	return hits
}

// psqlStdin runs psql with stdin (a COPY FROM STDIN's data).
func psqlStdin(t *testing.T, conninfo, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(fixture.cluster.BinDir, "psql"), append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-d", conninfo}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

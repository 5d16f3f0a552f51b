package integration

import (
	"regexp"
	"strings"
	"testing"
)

// phiPsqlCRUD is psql's program in phiClients. It runs with P and V set to
// the table names: patients/visits through the proxy, patients_plain/
// visits_plain direct. Literals and PREPARE/EXECUTE carry PHI; lookups use
// the deterministic columns.
const phiPsqlCRUD = `
SET client_encoding = 'UTF8';
INSERT INTO :P (id, name, ssn, diagnosis, dob, mrn) VALUES (1001, 'psql-1', '100-00-0001', 'flu', '1980-1-2', 42);
PREPARE ins(int, text, text, text, date, int8) AS INSERT INTO :P (id, name, ssn, diagnosis, dob, mrn) VALUES ($1, $2, $3, $4, $5, $6);
EXECUTE ins(1002, 'psql-2', '100-00-0002', 'asthma', '1990-12-31', 7);
EXECUTE ins(1003, 'psql-3', NULL, NULL, NULL, NULL);
EXECUTE ins(1004, 'psql-4', '100-00-0004', 'a ''quoted'' "diagnosis", ünïcödé', '2000-02-29', -9223372036854775808);
INSERT INTO :V (id, patient_ssn, visited_on) VALUES (1001, '100-00-0001', '2024-01-01'), (1002, '100-00-0002', '2024-01-02');
SELECT id, name, ssn, diagnosis, dob, mrn FROM :P WHERE id BETWEEN 1000 AND 1099 ORDER BY id;
SELECT id FROM :P WHERE ssn = '100-00-0002';
SELECT id, name FROM :P WHERE mrn = 42 OR mrn = -9223372036854775808 ORDER BY id;
SELECT id FROM :P WHERE ssn IN ('100-00-0001', '100-00-0004') ORDER BY id;
PREPARE byssn(text) AS SELECT id, diagnosis, dob FROM :P WHERE ssn = $1;
EXECUTE byssn('100-00-0001');
EXECUTE byssn('no-such-ssn');
SELECT p.id, v.patient_ssn, v.visited_on FROM :P p JOIN :V v ON v.patient_ssn = p.ssn WHERE p.id BETWEEN 1000 AND 1099 ORDER BY p.id;
SELECT count(*) FROM :P WHERE id BETWEEN 1000 AND 1099 AND diagnosis IS NULL;
UPDATE :P SET diagnosis = 'cured', dob = '1980-01-03' WHERE ssn = '100-00-0001';
PREPARE upd(text, int) AS UPDATE :P SET mrn = $2 WHERE ssn = $1;
EXECUTE upd('100-00-0002', 8);
DELETE FROM :P WHERE ssn = '100-00-0004' RETURNING id, ssn, diagnosis;
SELECT id, name, ssn, diagnosis, dob, mrn FROM :P WHERE id BETWEEN 1000 AND 1099 ORDER BY id;
DEALLOCATE ALL;
`

var sqlstateRe = regexp.MustCompile(`ERROR:  ([0-9A-Z]{5}):`)

func TestPHIPsqlRefusalsKeepTheSession(t *testing.T) {
	p := startPHIProxy(t)
	// ON_ERROR_STOP=0: psql carries on after each error, as an
	// interactive user would.
	out, _ := psql(t, appDSN(p.addr(), phiDB), "-v", "ON_ERROR_STOP=0", "-A", "-t",
		"-c", `\set VERBOSITY verbose`,
		"-c", "INSERT INTO patients (id, name, ssn, diagnosis, secret) VALUES (1101, 'refusals', '110-00-0001', 'flu', 'top secret')",
		"-c", "SELECT id FROM patients WHERE id BETWEEN 1100 AND 1199 ORDER BY ssn",
		"-c", "SELECT id FROM patients WHERE diagnosis = 'flu'",
		"-c", "SELECT secret FROM patients WHERE id = 1101",
		"-c", "SELECT 'alive after refusals'",
		// A refusal inside a transaction fails the transaction like a
		// server error: the next statement gets 25P02 until ROLLBACK.
		"-c", "BEGIN",
		"-c", "SELECT id FROM patients WHERE id = 1101 ORDER BY ssn",
		"-c", "SELECT 'in failed transaction'",
		"-c", "ROLLBACK",
		"-c", "SELECT 'after rollback', ssn FROM patients WHERE id = 1101",
	)
	got := sqlstateRe.FindAllStringSubmatch(out, -1)
	var codes []string
	for _, m := range got {
		codes = append(codes, m[1])
	}
	want := []string{"0A000", "0A000", "42501", "0A000", "25P02"}
	if strings.Join(codes, " ") != strings.Join(want, " ") {
		t.Fatalf("SQLSTATEs %v, want %v; psql output:\n%s", codes, want, out)
	}
	for _, s := range []string{"alive after refusals", "after rollback|110-00-0001", "public.patients.ssn", "public.patients.diagnosis", "public.patients.secret"} {
		if !strings.Contains(out, s) {
			t.Fatalf("psql output lacks %q:\n%s", s, out)
		}
	}
	// Refusals name columns, never values (psql's LINE context echoes the
	// client's own statement; the messages and hints must not).
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "LINE ") || strings.HasPrefix(l, " ") {
			continue
		}
		for _, v := range []string{"top secret", "flu", "110-00-0001"} {
			if strings.Contains(l, v) && !strings.HasPrefix(l, "after rollback|") {
				t.Fatalf("a refusal shows the value %q: %s", v, l)
			}
		}
	}
	for _, v := range []string{"top secret", "flu", "110-00-0001"} {
		if strings.Contains(p.out.String(), v) {
			t.Fatalf("the proxy's output shows the value %q", v)
		}
	}
}

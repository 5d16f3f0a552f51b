package rewrite

import (
	"strings"
	"testing"
)

// Predicates and Writes name the PHI columns a statement filters, joins,
// groups or counts distinct on, and the ones it assigns: policy refuses a
// role that may not read a column in plaintext any predicate on it, and
// checks write rules on the written ones.
func TestPredicatesAndWrites(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, nil)
	sess := Session{SearchPath: `"$user", public`, User: "app"}
	cases := []struct{ sql, preds, writes string }{
		{"SELECT ssn FROM patients WHERE id = 1", "", ""},
		{"SELECT id FROM patients WHERE ssn = '123-45-6789'", "public.patients.ssn", ""},
		{"SELECT id FROM patients WHERE ssn IN ($1, $2)", "public.patients.ssn", ""},
		{"SELECT p.id FROM patients p JOIN visits v ON v.patient_ssn = p.ssn", "public.patients.ssn public.visits.patient_ssn", ""},
		{"SELECT ssn, count(*) FROM patients GROUP BY ssn", "public.patients.ssn", ""},
		{"SELECT count(DISTINCT ssn) FROM patients", "public.patients.ssn", ""},
		{"INSERT INTO patients (id, ssn, diagnosis) VALUES (1, $1, $2)", "", "public.patients.diagnosis public.patients.ssn"},
		{"UPDATE patients SET diagnosis = $1 WHERE ssn = $2", "public.patients.ssn", "public.patients.diagnosis"},
		{"INSERT INTO visits (id, patient_ssn) SELECT id, ssn FROM patients", "", "public.visits.patient_ssn"},
	}
	for _, c := range cases {
		pl, err := p.Plan(c.sql, sess)
		if err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		st := pl.Statements[0]
		if g := strings.Join(st.Predicates, " "); g != c.preds {
			t.Errorf("%s: predicates %q, want %q", c.sql, g, c.preds)
		}
		if g := strings.Join(st.Writes, " "); g != c.writes {
			t.Errorf("%s: writes %q, want %q", c.sql, g, c.writes)
		}
	}
}

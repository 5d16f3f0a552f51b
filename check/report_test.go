package check

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

func TestSortPutsErrorsFirstThenObjects(t *testing.T) {
	fs := []Finding{
		{Severity: Warning, Kind: KindTrigger, Object: "trigger a on public.p"},
		{Severity: Error, Kind: KindKeysetMissing, Object: "keyset k"},
		{Severity: Warning, Kind: KindEventTrigger, Object: "event trigger x"},
		{Severity: Error, Kind: KindConstraintMissing, Object: "column public.p.ssn"},
		{Severity: Error, Kind: KindColumnPlaintext, Object: "column public.p.ssn"},
	}
	Sort(fs)
	var got []string
	for _, f := range fs {
		got = append(got, f.Kind)
	}
	want := "column_plaintext constraint_missing keyset_missing event_trigger_missing trigger_on_phi_table"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
	if s := Summarize(fs); s != (Summary{Errors: 3, Warnings: 2}) {
		t.Errorf("summary %+v", s)
	}
}

func TestReportWithoutFindingsIsAnEmptyArray(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, nil); err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil || string(doc["findings"]) != "[]" || !strings.Contains(string(doc["summary"]), `"errors": 0`) {
		t.Errorf("json %s: %v", b.String(), err)
	}
	b.Reset()
	if err := WriteTable(&b, nil); err != nil || !strings.HasPrefix(b.String(), "no findings") {
		t.Errorf("table %q: %v", b.String(), err)
	}
}

func TestTableAlignsColumns(t *testing.T) {
	var b bytes.Buffer
	err := WriteTable(&b, []Finding{
		{Severity: Error, Kind: KindColumnMissing, Object: "column public.patients.ssn", Finding: "does not exist", Fix: "add it"},
		{Severity: Warning, Kind: KindTrigger, Object: "trigger t on public.p", Finding: "runs f()", Fix: "drop it"},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	col := strings.Index(lines[0], "FINDING")
	if col < 0 || !strings.HasPrefix(lines[1][col:], "does not exist") || !strings.HasPrefix(lines[2][col:], "runs f()") {
		t.Errorf("not aligned:\n%s", b.String())
	}
	if !strings.Contains(b.String(), "\n1 errors, 1 warnings\n") {
		t.Errorf("no summary:\n%s", b.String())
	}
}

// The expression check compares with is the one crypto.EnvelopeCheckSQL
// writes (the clean-schema test in cmd/phiproxy shows PostgreSQL prints it
// so).
func TestEnvelopeCheckExprFollowsEnvelopeCheckSQL(t *testing.T) {
	sql := crypto.EnvelopeCheckSQL(config.Column{Schema: "public", Table: "p", Name: "ssn"})
	expr := EnvelopeCheckExpr("ssn")
	// `"ssn" LIKE E'\\x50480125'::bytea` is printed `(ssn ~~ '\x50480125'::bytea)`.
	lit := strings.TrimSuffix(strings.TrimPrefix(expr, "(ssn ~~ "), ")")
	if !strings.Contains(sql, `LIKE E'`+strings.ReplaceAll(strings.TrimPrefix(lit, "'"), `\`, `\\`)) {
		t.Errorf("EnvelopeCheckExpr %s does not match %s", expr, sql)
	}
}

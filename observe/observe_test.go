package observe

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fixedClock() func() time.Time {
	t := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	return func() time.Time { t = t.Add(time.Minute); return t }
}

var (
	works = Record{Fingerprint: "aa01", Query: "SELECT ssn FROM patients WHERE id = $1", Action: "read", Columns: []string{"public.patients.ssn"},
		Verdict: Works, Results: []string{"#1 public.patients.ssn"}}
	order = Record{Fingerprint: "bb02", Query: "SELECT ssn FROM patients ORDER BY ssn", Action: "read", Columns: []string{"public.patients.ssn"},
		Verdict: Refused, SQLSTATE: "0A000", Message: "cannot ORDER BY PHI column public.patients.ssn", Hint: "ciphertext has no order: sort in the application after decryption"}
	like = Record{Fingerprint: "cc03", Query: "SELECT id FROM patients WHERE diagnosis LIKE $1", Action: "read", Columns: []string{"public.patients.diagnosis", "public.patients.ssn"},
		Verdict: Refused, SQLSTATE: "0A000", Message: "cannot use LIKE on PHI column public.patients.diagnosis", Hint: "a randomized column supports only projection and IS [NOT] NULL"}
)

func TestStoreCountsPerFingerprintAndSurvivesARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", FileName)
	clock := fixedClock()
	s, err := Open(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Add(works, "billing", "app") || s.Add(works, "billing", "app") || s.Add(works, "reports", "app") {
		t.Fatal("only the first sight of a fingerprint is new")
	}
	if !s.Add(order, "", "app") {
		t.Fatal("a second fingerprint is new")
	}
	if s.Add(Record{Query: "no fingerprint"}, "x", "y") {
		t.Fatal("a text without a fingerprint is not recorded")
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file %v %v", fi, err)
	}
	s2, err := Open(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	s2.Add(works, "billing", "app2")
	changed := order
	changed.Verdict, changed.SQLSTATE, changed.Message, changed.Hint = Works, "", "", ""
	if !s2.Add(changed, "billing", "app") {
		t.Fatal("a changed verdict is reported as new")
	}
	f := s2.Snapshot()
	if len(f.Records) != 2 {
		t.Fatalf("records %+v", f.Records)
	}
	w := f.Records[0]
	if w.Count != 4 || strings.Join(w.Applications, ",") != "billing,reports" || strings.Join(w.DBUsers, ",") != "app,app2" || w.FirstSeen == w.LastSeen {
		t.Errorf("works record %+v", w)
	}
	if o := f.Records[1]; o.Verdict != Works || o.Count != 2 || o.SQLSTATE != "" || strings.Join(o.Applications, ",") != "(none),billing" {
		t.Errorf("the latest verdict counts on: %+v", o)
	}
}

func TestStoreIsBounded(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), FileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxRecords+5; i++ {
		r := works
		r.Fingerprint = fmt.Sprintf("%016x", i)
		s.Add(r, fmt.Sprintf("app-%d", i%40), "u")
	}
	r := works
	r.Fingerprint = fmt.Sprintf("%016x", 0)
	for i := 0; i < 40; i++ {
		s.Add(r, fmt.Sprintf("app-%d", i), "u")
	}
	f := s.Snapshot()
	if len(f.Records) != MaxRecords || f.Dropped != 5 {
		t.Fatalf("%d records, %d dropped", len(f.Records), f.Dropped)
	}
	if n := len(f.Records[0].Applications); n != MaxNames {
		t.Fatalf("%d applications kept, want %d", n, MaxNames)
	}
}

func testReport(t *testing.T) *Report {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), FileName), fixedClock())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		s.Add(works, "billing", "app")
	}
	s.Add(order, "billing", "app")
	for i := 0; i < 3; i++ {
		s.Add(like, "reports", "analyst")
	}
	return NewReport(s.Snapshot())
}

func TestReportSummaryAndRiskOrder(t *testing.T) {
	r := testReport(t)
	s := r.Summary
	if s.Shapes != 3 || s.WouldRefuse != 2 || s.Executions != 9 || s.RefusedExecutions != 4 || len(s.Columns) != 2 || len(s.Reasons) != 2 || !r.Refusals() {
		t.Fatalf("summary %+v", s)
	}
	if s.Reasons[0].Executions != 3 || !strings.HasPrefix(s.Reasons[0].Hint, "a randomized column") {
		t.Errorf("the most frequent reason first: %+v", s.Reasons)
	}
	var got []string
	for _, row := range r.Rows {
		got = append(got, row.Fingerprint+" "+row.Column)
	}
	want := "cc03 public.patients.diagnosis|cc03 public.patients.ssn|bb02 public.patients.ssn|aa01 public.patients.ssn"
	if strings.Join(got, "|") != want {
		t.Errorf("rows %v, want %s", got, want)
	}
	if NewReport(&File{}).Refusals() {
		t.Error("an empty report has no refusal")
	}
}

func TestReportFormats(t *testing.T) {
	r := testReport(t)
	var tb bytes.Buffer
	if err := r.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"3 statement shapes seen on 2 observed columns (9 executions); 2 would be refused", "REFUSED 0A000", "hint: ciphertext has no order", "result columns #1 public.patients.ssn decrypted"} {
		if !strings.Contains(tb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tb.String())
		}
	}
	var jb bytes.Buffer
	if err := r.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(jb.Bytes(), &back); err != nil || back.Summary.WouldRefuse != 2 || len(back.Rows) != 4 {
		t.Fatalf("json %v %+v", err, back.Summary)
	}
	var cb bytes.Buffer
	if err := r.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&cb).ReadAll()
	if err != nil || len(recs) != 5 || recs[0][0] != "column" || recs[1][1] != Refused {
		t.Fatalf("csv %v %q", err, recs)
	}
	var hb bytes.Buffer
	if err := r.WriteHTML(&hb); err != nil {
		t.Fatal(err)
	}
	page := hb.String()
	for _, want := range []string{"<!DOCTYPE html>", `id="headline"`, "would be refused", "ciphertext has no order", "SELECT ssn FROM patients ORDER BY ssn"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, external := range []string{"http://", "https://", "<script", "<link", "src=", "url("} {
		if strings.Contains(page, external) {
			t.Errorf("page is not self-contained: %q", external)
		}
	}
}

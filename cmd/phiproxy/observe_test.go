package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/observe"
)

// observeConfig writes a config whose state_dir is dir/state; no database
// is needed to read the records.
func observeConfig(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "p.yaml")
	doc := "listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:5432}\ncatalog_dsn: postgres://a@127.0.0.1/clinic\nstate_dir: state/\n" +
		"phi:\n  public.patients:\n    ssn: {type: text, mode: deterministic, enforce: observe}\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestObserveReportExitCodes(t *testing.T) {
	dir := t.TempDir()
	cfg := observeConfig(t, dir)
	if out, errs, code := cmdRun(t, "observe", "report", "--config", cfg); code != 0 || !strings.Contains(out, "0 statement shapes seen") {
		t.Fatalf("no records yet: exit %d\n%s%s", code, out, errs)
	}
	st, err := observe.Open(filepath.Join(dir, "state", observe.FileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Add(observe.Record{Fingerprint: "aa", Query: "SELECT ssn FROM patients WHERE ssn = $1", Columns: []string{"public.patients.ssn"}, Verdict: observe.Works, Params: []string{"$1 public.patients.ssn"}}, "billing", "app")
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	if out, errs, code := cmdRun(t, "observe", "report", "--config", cfg, "--format", "csv"); code != 0 || !strings.Contains(out, "public.patients.ssn,works") {
		t.Fatalf("works only: exit %d\n%s%s", code, out, errs)
	}
	st.Add(observe.Record{Fingerprint: "bb", Query: "SELECT ssn FROM patients ORDER BY ssn", Columns: []string{"public.patients.ssn"}, Verdict: observe.Refused,
		SQLSTATE: "0A000", Message: "cannot ORDER BY PHI column public.patients.ssn", Hint: "ciphertext has no order"}, "billing", "app")
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"table", "json", "csv", "html"} {
		out, errs, code := cmdRun(t, "observe", "report", "--config", cfg, "--format", format)
		if code != 1 || !strings.Contains(out, "ORDER BY ssn") || !strings.Contains(errs, "1 of 2 statement shapes would be refused") {
			t.Errorf("%s with a refusal: exit %d\n%s%s", format, code, out, errs)
		}
	}
	if _, _, code := cmdRun(t, "observe", "report", "--config", cfg, "--format", "pdf"); code != 2 {
		t.Errorf("unknown format: exit %d, want 2", code)
	}
	if _, _, code := cmdRun(t, "observe", "report"); code != 2 {
		t.Errorf("no --config: exit %d, want 2", code)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
)

// auditRun runs `phiproxy audit ARGS`.
func auditRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return cmdRun(t, append([]string{"audit"}, args...)...)
}

// trailWriter writes a trail as the proxy's writer does (chained lines,
// signed checkpoints every 5 events, 10 lines a file, the head file).
type trailWriter struct {
	t      *testing.T
	dir    string
	head   string
	signer *crypto.Signer
	seq    uint64
	prev   string
	since  int
	f      *os.File
	inFile int
	ts     time.Time
}

func (w *trailWriter) write(ev audit.Event) *audit.Event {
	w.t.Helper()
	if w.f == nil || w.inFile == 10 {
		if w.f != nil {
			w.f.Close()
		}
		f, err := os.OpenFile(filepath.Join(w.dir, audit.FileName(w.seq+1)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			w.t.Fatal(err)
		}
		w.f, w.inFile = f, 0
	}
	w.seq++
	w.ts = w.ts.Add(time.Minute)
	ev.Seq, ev.Prev, ev.TS, ev.Instance = w.seq, w.prev, audit.FormatTime(w.ts), "px-1"
	if ev.Action == audit.ActionCheckpoint {
		if err := ev.Sign(w.signer); err != nil {
			w.t.Fatal(err)
		}
	}
	line, err := ev.Marshal()
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.f.Write(append(line, '\n')); err != nil {
		w.t.Fatal(err)
	}
	w.inFile++
	w.prev = ev.Hash
	if ev.Action == audit.ActionCheckpoint {
		h, _ := json.Marshal(audit.Head{Instance: ev.Instance, Seq: ev.Seq, Hash: ev.Hash, File: filepath.Base(w.f.Name()), TS: ev.TS})
		if err := os.WriteFile(w.head, h, 0o600); err != nil {
			w.t.Fatal(err)
		}
		return &ev
	}
	if w.since++; w.since == 5 {
		w.since = 0
		w.write(audit.Event{Action: audit.ActionCheckpoint})
	}
	return &ev
}

func statementEvent(i int) audit.Event {
	n := int64(i)
	ev := audit.Event{Session: fmt.Sprintf("c1f%02d", i%3), DBUser: []string{"alice", "bob"}[i%2], Roles: []string{"physician"},
		EndUser: "dr.smith", Application: "=HYPERLINK(\"x\")", Client: fmt.Sprintf("10.1.2.%d:51234", i), Database: "clinic", TLS: true,
		Action: audit.ActionRead, Relations: []string{"public.patients"}, Columns: []string{"public.patients.ssn", "public.patients.dob"},
		Decision: audit.DecisionAllowed, Reason: "rule radiologist-weekday", Fingerprint: "f9a2356b11f47f20",
		Query: "SELECT ssn, dob FROM patients WHERE id = $1", Rows: &n}
	if i%4 == 3 {
		ev.Action, ev.Decision, ev.Rows, ev.Error = audit.ActionWrite, audit.DecisionDenied, nil, "42501"
	}
	return ev
}

// auditFixture makes a config with keys and a cleanly stopped trail of n
// statements; it returns the config path and its Config.
func auditFixture(t *testing.T, n int) (string, *config.Config, *trailWriter) {
	t.Helper()
	_, cfgPath := keysConfig(t)
	mustKeys(t, "init", "--config", cfgPath)
	cfg, kr := openKeys(t, cfgPath)
	signer, err := kr.Signer()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cfg.Audit.File.Dir, cfg.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	w := &trailWriter{t: t, dir: cfg.Audit.File.Dir, head: filepath.Join(cfg.StateDir, headFileName), signer: signer,
		prev: audit.ZeroHash, ts: time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)}
	w.write(audit.Event{Action: audit.ActionStart})
	for i := range n {
		w.write(statementEvent(i))
	}
	w.write(audit.Event{Action: audit.ActionStop})
	if w.since != 0 {
		w.write(audit.Event{Action: audit.ActionCheckpoint})
	}
	w.f.Close()
	w.f = nil
	return cfgPath, cfg, w
}

func trailLines(t *testing.T, dir string) []string {
	t.Helper()
	segs, err := audit.Segments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range segs {
		b, err := os.ReadFile(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")...)
	}
	return out
}

func TestAuditVerifyCommand(t *testing.T) {
	cfgPath, cfg, _ := auditFixture(t, 20)
	dir := cfg.Audit.File.Dir
	pub := filepath.Join(t.TempDir(), "audit-public.json")
	if err := os.WriteFile(pub, []byte(mustKeys(t, "export-public", "--config", cfgPath)), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "verify-state.json")
	// 1 start + 20 statements + 1 stop = 22 events, a checkpoint after
	// every 5 (and the last after stop): 27 lines in 3 files.
	const summary = "intact: 27 events (5 checkpoints) in 3 files, seq 1..27"
	for _, args := range [][]string{
		{"verify", "--config", cfgPath},
		{"verify", "--dir", dir, "--public-key", pub},
		{"verify", "--dir", dir, "--public-key", pub, "--state", state},
	} {
		out, errs, code := auditRun(t, args...)
		if code != 0 || !strings.HasPrefix(out, summary) || errs != "" {
			t.Fatalf("audit %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
		}
	}

	for _, c := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no trail given", []string{"verify"}, "give --config FILE or --dir DIR"},
		{"no key for the signatures", []string{"verify", "--dir", dir}, "--public-key"},
		{"a private keyset as the public key", []string{"verify", "--dir", dir, "--public-key", strings.TrimPrefix(cfg.Keys.KEK, "file:")}, "public keyset"},
		{"a missing directory", []string{"verify", "--dir", filepath.Join(dir, "nope"), "--public-key", pub}, "no audit trail directory"},
		{"an unknown action", []string{"verfy", "--config", cfgPath}, "unknown action"},
		{"an argument", []string{"verify", "--config", cfgPath, "extra"}, "takes no arguments"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, errs, code := auditRun(t, c.args...)
			if code != 2 || !strings.Contains(errs, c.msg) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errs, c.msg)
			}
		})
	}

	// Cut the stop event and the last checkpoint off: caught through the
	// head file (--config) and through --state; not by a bare --dir run.
	last := filepath.Join(dir, audit.FileName(21))
	b, _ := os.ReadFile(last)
	lines := bytes.SplitAfter(b, []byte("\n"))
	os.WriteFile(last, bytes.Join(lines[:len(lines)-3], nil), 0o600)
	for _, args := range [][]string{
		{"verify", "--config", cfgPath},
		{"verify", "--dir", dir, "--public-key", pub, "--state", state},
	} {
		out, errs, code := auditRun(t, args...)
		if code != 1 || !strings.HasPrefix(out, "TAMPERED: seq 27: the trail ends at seq 25") || !strings.Contains(errs, "first bad seq 27") {
			t.Fatalf("audit %s after truncation: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
		}
	}
	if out, _, code := auditRun(t, "verify", "--dir", dir, "--public-key", pub); code != 0 || !strings.Contains(out, "1 event after the last checkpoint is not sealed") {
		t.Fatalf("a bare run: exit %d\n%s", code, out)
	}

	// An edited line names its seq and file.
	mid := filepath.Join(dir, audit.FileName(11))
	b, _ = os.ReadFile(mid)
	os.WriteFile(mid, bytes.Replace(b, []byte(`"bob"`), []byte(`"eve"`), 1), 0o600)
	out, errs, code := auditRun(t, "verify", "--dir", dir, "--public-key", pub)
	if code != 1 || !strings.Contains(out, "TAMPERED: seq 13 ("+audit.FileName(11)+" line 3)") ||
		!strings.Contains(errs, "first bad seq 13 in "+audit.FileName(11)) {
		t.Fatalf("edited line: exit %d\n%s%s", code, out, errs)
	}
}

func TestAuditSearchAndExport(t *testing.T) {
	cfgPath, cfg, _ := auditFixture(t, 20)
	all := trailLines(t, cfg.Audit.File.Dir)

	// json: the exact lines.
	out, _, code := auditRun(t, "search", "--config", cfgPath, "--format", "json")
	if code != 0 || out != strings.Join(all, "\n")+"\n" {
		t.Fatalf("search --format json: exit %d, %d bytes; want the trail's %d lines", code, len(out), len(all))
	}
	out, _, _ = auditRun(t, "search", "--dir", cfg.Audit.File.Dir, "--db-user", "bob", "--decision", "allowed", "--client", "10.1.2.0/28")
	// bob: odd i; allowed: i%4 != 3; client .0-.15 → i in 1, 5, 9, 13.
	if n := strings.Count(out, "\n"); n != 4 {
		t.Fatalf("filtered search: %d lines\n%s", n, out)
	}
	out, _, _ = auditRun(t, "search", "--dir", cfg.Audit.File.Dir, "--since", "2026-11-24T08:05:00Z", "--until", "2026-11-24T08:10:00Z", "--format", "json")
	if n := strings.Count(out, "\n"); n != 5 {
		t.Fatalf("since/until: %d lines\n%s", n, out)
	}

	// csv: header, the contract's fields in order, arrays joined by ;,
	// client-supplied formulas defused.
	out, _, code = auditRun(t, "search", "--config", cfgPath, "--format", "csv", "--column", "ssn", "--session", "c1f01")
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil {
		t.Fatalf("csv: exit %d, %v\n%s", code, err, out)
	}
	if strings.Join(recs[0][:5], ",") != "v,seq,ts,instance,session" || len(recs) != 1+7 {
		t.Fatalf("csv: %d records, header %v", len(recs), recs[0])
	}
	row := map[string]string{}
	for i, h := range recs[0] {
		row[h] = recs[1][i]
	}
	if row["columns"] != "public.patients.ssn;public.patients.dob" || row["application"] != `'=HYPERLINK("x")` || row["session"] != "c1f01" {
		t.Fatalf("csv row: %v", row)
	}

	// table: a header and aligned columns.
	out, _, code = auditRun(t, "search", "--config", cfgPath, "--format", "table", "--db-user", "alice")
	rows := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(rows) != 11 || !strings.HasPrefix(rows[0], "TIME") {
		t.Fatalf("table: exit %d\n%s", code, out)
	}
	at := len([]rune(rows[0][:strings.Index(rows[0], "QUERY")]))
	for _, r := range rows[1:] {
		if !strings.HasPrefix(string([]rune(r)[at:]), "SELECT ssn, dob FROM patients") {
			t.Fatalf("table columns not aligned:\n%s", out)
		}
	}

	// export --output: the same bytes as search --format json, mode 0600.
	dst := filepath.Join(t.TempDir(), "export.jsonl")
	if _, errs, code := auditRun(t, "export", "--config", cfgPath, "--output", dst, "--end-user", "dr.smith"); code != 0 {
		t.Fatalf("export: exit %d %s", code, errs)
	}
	got, _ := os.ReadFile(dst)
	want, _, _ := auditRun(t, "search", "--config", cfgPath, "--format", "json", "--end-user", "dr.smith")
	if fi, _ := os.Stat(dst); string(got) != want || fi.Mode().Perm() != 0o600 || strings.Count(want, "\n") != 20 {
		t.Fatalf("export file (mode %v) differs from search output", fi.Mode())
	}
	out, _, _ = auditRun(t, "export", "--config", cfgPath, "--format", "csv", "--action", "write")
	if n := strings.Count(out, "\n"); n != 1+5 {
		t.Fatalf("export csv: %d lines", n)
	}

	for _, args := range [][]string{
		{"search", "--config", cfgPath, "--format", "xml"},
		{"export", "--config", cfgPath, "--format", "table"},
		{"search", "--config", cfgPath, "--client", "10.1.2"},
		{"search", "--config", cfgPath, "--since", "last tuesday"},
	} {
		if _, _, code := auditRun(t, args...); code != 2 {
			t.Errorf("audit %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2026-11-24T12:00:00Z":      time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC),
		"2026-11-24T12:00:00+01:00": time.Date(2026, 11, 24, 11, 0, 0, 0, time.UTC),
		"2026-11-24":                time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC),
		"168h":                      now.Add(-168 * time.Hour),
		"7d":                        now.Add(-168 * time.Hour),
		"90m":                       now.Add(-90 * time.Minute),
	} {
		got, err := parseWhen(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"yesterday", "-5h", "2026-13-01", "7w"} {
		if _, err := parseWhen(in, now); err == nil {
			t.Errorf("parseWhen(%q) accepted", in)
		}
	}
}

func TestAuditTail(t *testing.T) {
	cfgPath, cfg, w := auditFixture(t, 20)
	all := trailLines(t, cfg.Audit.File.Dir)
	out, _, code := auditRun(t, "tail", "--config", cfgPath, "-n", "3", "--format", "json")
	if code != 0 || out != strings.Join(all[len(all)-3:], "\n")+"\n" {
		t.Fatalf("tail -n 3: exit %d\n%s", code, out)
	}
	out, _, _ = auditRun(t, "tail", "--config", cfgPath, "-n", "2", "--db-user", "alice", "--format", "json")
	if strings.Count(out, `"db_user":"alice"`) != 2 || strings.Count(out, "\n") != 2 {
		t.Fatalf("tail with a filter:\n%s", out)
	}

	// -f prints new events, across a rotation, until the context ends.
	ctx, cancel := context.WithCancel(context.Background())
	var buf testenv.Buffer
	done := make(chan error, 1)
	go func() {
		env := &cmdEnv{stdout: &buf, stderr: &buf}
		done <- runAuditWith(ctx, env, []string{"tail", "--config", cfgPath, "-f", "-n", "1", "--format", "json"},
			&auditCmd{now: time.Now, poll: 10 * time.Millisecond})
	}()
	waitFor := func(what string, ok func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok(buf.String()) {
			if time.Now().After(deadline) {
				t.Fatalf("tail -f: no %s; output:\n%s", what, buf.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("last event", func(s string) bool { return s == all[len(all)-1]+"\n" })
	w.inFile = 10 // the next line rotates
	w.since = 0
	w.write(audit.Event{Action: audit.ActionStart})
	for i := range 3 {
		w.write(statementEvent(100 + i))
	}
	w.f.Close()
	waitFor("new events", func(s string) bool { return strings.Count(s, "\n") == 5 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tail -f ended with %v", err)
	}
	if !strings.Contains(buf.String(), `"seq":28,`) || !strings.Contains(buf.String(), `"seq":31,`) {
		t.Fatalf("tail -f output:\n%s", buf.String())
	}
}

// TestAuditVerifyPartialLine: a last line cut mid-way is tampering; one
// that a running writer completes while verify looks is not.
func TestAuditVerifyPartialLine(t *testing.T) {
	cfgPath, cfg, _ := auditFixture(t, 20)
	last := filepath.Join(cfg.Audit.File.Dir, audit.FileName(21))
	full, _ := os.ReadFile(last)
	os.WriteFile(last, full[:len(full)-25], 0o600)
	verify := func(settle time.Duration, during func()) (string, int) {
		var out, errb bytes.Buffer
		env := &cmdEnv{stdout: &out, stderr: &errb}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if during != nil {
				during()
			}
		}()
		err := runAuditWith(context.Background(), env, []string{"verify", "--config", cfgPath}, &auditCmd{now: time.Now, settle: settle})
		<-done
		return out.String() + errb.String(), exitCode(env, err)
	}
	if out, code := verify(time.Millisecond, nil); code != 1 || !strings.Contains(out, "cut off mid-line") {
		t.Fatalf("a cut last line: exit %d\n%s", code, out)
	}
	out, code := verify(300*time.Millisecond, func() {
		time.Sleep(100 * time.Millisecond)
		os.WriteFile(last, full, 0o600)
	})
	if code != 0 || !strings.HasPrefix(out, "intact") {
		t.Fatalf("a line completed while verify looked: exit %d\n%s", code, out)
	}
}

// TestAuditVerifyAcrossSigningKeyRotation: the trail the CLI itself writes
// (keys rotate records key_rotated through the real Trail) verifies with
// the keyset and with a public export taken after the rotation; an export
// from before it does not know the new key, and verify says which
// checkpoint it cannot check.
func TestAuditVerifyAcrossSigningKeyRotation(t *testing.T) {
	_, cfgPath := keysConfig(t)
	mustKeys(t, "init", "--config", cfgPath)
	mustKeys(t, "rotate", "--config", cfgPath, "--column", "public.patients.ssn")
	dir := t.TempDir()
	before, after := filepath.Join(dir, "before.json"), filepath.Join(dir, "after.json")
	os.WriteFile(before, []byte(mustKeys(t, "export-public", "--config", cfgPath)), 0o644)
	mustKeys(t, "rotate", "--config", cfgPath, "--signing")
	os.WriteFile(after, []byte(mustKeys(t, "export-public", "--config", cfgPath)), 0o644)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"verify", "--config", cfgPath},
		{"verify", "--dir", cfg.Audit.File.Dir, "--public-key", after},
	} {
		out, errs, code := auditRun(t, args...)
		if code != 0 || !strings.HasPrefix(out, "intact: 8 events (2 checkpoints)") || !strings.Contains(out, "clean stop") {
			t.Fatalf("audit %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
		}
	}
	// start, key_rotated, stop, checkpoint (the old key); the same again
	// signed by the new key.
	out, errs, code := auditRun(t, "verify", "--dir", cfg.Audit.File.Dir, "--public-key", before)
	if code != 1 || !strings.HasPrefix(out, "TAMPERED: seq 8 ") || !strings.Contains(out, "signature does not verify") {
		t.Fatalf("verify with the export from before the rotation: exit %d\n%s%s", code, out, errs)
	}
	out, _, _ = auditRun(t, "search", "--config", cfgPath, "--action", "key_rotated", "--format", "csv")
	if strings.Count(out, "key_rotated") != 2 || !strings.Contains(out, "audit-signing keyset: new primary key id") {
		t.Fatalf("search for key rotations:\n%s", out)
	}
}

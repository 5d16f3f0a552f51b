package phi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// auditCfg is the test config with a trail in a fresh directory.
func auditCfg(t testing.TB, mode string) (*config.Config, string) {
	t.Helper()
	cfg := *testCfg
	dir := t.TempDir()
	cfg.Audit = config.Audit{Mode: mode, Instance: "px-test", ContextTags: []string{"device_id", "traceparent"},
		File: config.AuditFile{Dir: filepath.Join(dir, "audit"), CheckpointEvery: 1000, CheckpointInterval: time.Minute, MaxFileBytes: 1 << 20}}
	return &cfg, dir
}

// startAudited runs the proxy with the trail of cfg.
func startAudited(t testing.TB, cfg *config.Config, dir string, opts ...Option) *testProxy {
	t.Helper()
	startProxy(t) // empties the tables (and serves a proxy nobody uses)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return serveProxy(t, ctx, cfg, append([]Option{WithAudit(cfg.Audit, filepath.Join(dir, "state", "audit-head.json"), "test")}, opts...)...)
}

// audited is a fixture whose proxy keeps an audit trail.
type audited struct {
	*fixture
	cfg *config.Config // the proxy's: the trail is in cfg.Audit.File.Dir
	dir string         // the test's directory (auditCfg), trail and state
}

// startStrictAudit runs a proxy with a strict audit trail in a fresh
// directory (auditCfg, startAudited with opts) and returns the test's
// context and the fixture.
func startStrictAudit(t testing.TB, opts ...Option) (context.Context, *audited) {
	t.Helper()
	cfg, dir := auditCfg(t, config.AuditStrict)
	f := fixtureOf(t, startAudited(t, cfg, dir, opts...))
	return f.ctx, &audited{f, cfg, dir}
}

// trail reads the proxy's trail (trailEvents).
func (a *audited) trail() []*audit.Event {
	a.t.Helper()
	return trailEvents(a.t, a.cfg.Audit.File.Dir)
}

// trailEvents reads every event of the trail in dir, checking the chain.
func trailEvents(t testing.TB, dir string) []*audit.Event {
	t.Helper()
	segs, err := audit.Segments(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := audit.NewReader(segs)
	defer r.Close()
	var out []*audit.Event
	prev := audit.ZeroHash
	for r.Next() {
		ev, err := audit.Parse(r.Line().Bytes)
		if err != nil {
			t.Fatalf("%s:%d: %v", r.Line().File, r.Line().No, err)
		}
		if ev.Prev != prev || ev.Seq != uint64(len(out)+1) {
			t.Fatalf("chain broken at seq %d", ev.Seq)
		}
		prev = ev.Hash
		out = append(out, ev)
	}
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	return out
}

// statementEvents are the events of statements, with their completions
// folded in (rows, error), in order.
func statementEvents(evs []*audit.Event) []*audit.Event {
	bySeq := map[uint64]*audit.Event{}
	var out []*audit.Event
	for _, e := range evs {
		switch e.Action {
		case audit.ActionStart, audit.ActionStop, audit.ActionCheckpoint, audit.ActionConfigLoaded, audit.ActionKeyRotated:
		case audit.ActionCompletion:
			if s := bySeq[e.Ref]; s != nil {
				s.Rows, s.Error = e.Rows, e.Error
				if e.Reason != "" {
					s.Reason = strings.TrimPrefix(s.Reason+"; "+e.Reason, "; ")
				}
			}
		default:
			c := *e
			bySeq[e.Seq] = &c
			out = append(out, &c)
		}
	}
	return out
}

func describe(e *audit.Event) string {
	rows := "null"
	if e.Rows != nil {
		rows = fmt.Sprint(*e.Rows)
	}
	s := fmt.Sprintf("%s %s %s %s %s rows=%s error=%s %s", e.Action, e.Decision, strings.Join(e.Relations, ","), strings.Join(e.Columns, ","), e.Protocol, rows, e.Error, e.Query)
	if e.EndUser != "" {
		s += " end_user=" + e.EndUser
	}
	for _, k := range []string{"device_id", "traceparent"} {
		if v, ok := e.Context[k]; ok {
			s += " " + k + "=" + v
		}
	}
	return s
}

// awaitEvents polls until the trail holds n statement events.
func awaitEvents(t testing.TB, dir string, n int) []*audit.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs := statementEvents(trailEvents(t, dir))
		if len(evs) >= n || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every PHI statement is one event with names only: reads, writes,
// deletes, COPY both ways, refusals and server errors, both protocols;
// non-PHI statements none. No planted value reaches the trail.
func TestAuditRecordsEveryPHIStatement(t *testing.T) {
	ctx, p := startStrictAudit(t)
	simple, ext := p.via(pgx.QueryExecModeSimpleProtocol, "application_name=audit-test"), p.via(pgx.QueryExecModeCacheStatement)
	canary := "AUDIT-CANARY-" + fmt.Sprint(time.Now().UnixNano())

	mustExec(t, ctx, ext, "INSERT INTO patients (id, ssn, diagnosis) VALUES (1, $1, $2)", canary+"-ssn", canary+"-dx")
	mustExec(t, ctx, simple, "INSERT INTO patients (id, ssn) VALUES (2, '"+canary+"-lit')")
	var got string
	if err := simple.QueryRow(ctx, "/*device_id='tablet-7',patient='"+canary+"-tag',end_user='dr.smith'*/ SELECT ssn FROM patients WHERE ssn = '"+canary+"-ssn'").Scan(&got); err != nil || got != canary+"-ssn" {
		t.Fatalf("select: %q %v", got, err)
	}
	if err := ext.QueryRow(ctx, "SELECT diagnosis FROM patients WHERE ssn = $1", canary+"-ssn").Scan(&got); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, simple, "SELECT 1") // no PHI: no event
	// A refusal and a server error that echoes nothing of ours.
	if _, err := simple.Exec(ctx, "SELECT ssn FROM patients ORDER BY ssn"); sqlstate(err) != "0A000" {
		t.Fatalf("ORDER BY ssn: %v", err)
	}
	if _, err := ext.Exec(ctx, "SELECT ssn, 1/0 FROM patients WHERE ssn = $1", canary+"-ssn"); sqlstate(err) != "22012" {
		t.Fatalf("1/0: %v", err)
	}
	// A unique violation on a deterministic column: PostgreSQL's DETAIL
	// holds the ciphertext; neither it nor the value reaches the trail.
	mustExec(t, ctx, ext, "INSERT INTO sq_patients (name, gov_id) VALUES ('a', $1)", canary+"-gov")
	if _, err := ext.Exec(ctx, "INSERT INTO sq_patients (name, gov_id) VALUES ('b', $1)", canary+"-gov"); sqlstate(err) != "23505" {
		t.Fatalf("duplicate: %v", err)
	}
	mustExec(t, ctx, p.direct(pgx.QueryExecModeSimpleProtocol), "TRUNCATE sq_patients")
	// COPY both ways.
	var buf bytes.Buffer
	if _, err := simple.PgConn().CopyTo(ctx, &buf, "COPY patients (id, ssn) TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	if _, err := simple.PgConn().CopyFrom(ctx, strings.NewReader("3\t"+canary+"-copy\n"), "COPY patients (id, ssn) FROM STDIN"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, ext, "DELETE FROM patients WHERE ssn = $1", canary+"-copy")

	want := []string{
		"write allowed public.patients public.patients.diagnosis,public.patients.ssn extended rows=1 error= INSERT INTO patients (id, ssn, diagnosis) VALUES ($3, $1, $2)",
		"write allowed public.patients public.patients.ssn simple rows=1 error= INSERT INTO patients (id, ssn) VALUES ($1, $2)",
		"read allowed public.patients public.patients.ssn simple rows=1 error= SELECT ssn FROM patients WHERE ssn = $1 end_user=dr.smith device_id=tablet-7",
		"read allowed public.patients public.patients.diagnosis,public.patients.ssn extended rows=1 error= SELECT diagnosis FROM patients WHERE ssn = $1",
		"read denied public.patients  simple rows=0 error=0A000 SELECT ssn FROM patients ORDER BY ssn",
		"read allowed public.patients public.patients.ssn extended rows=0 error=22012 SELECT ssn, $2/$3 FROM patients WHERE ssn = $1",
		"write allowed public.sq_patients public.sq_patients.gov_id extended rows=1 error= INSERT INTO sq_patients (name, gov_id) VALUES ($2, $1)",
		"write allowed public.sq_patients public.sq_patients.gov_id extended rows=0 error=23505 INSERT INTO sq_patients (name, gov_id) VALUES ($2, $1)",
		"copy_out allowed public.patients public.patients.ssn simple rows=2 error= COPY patients (id, ssn) TO STDOUT",
		"copy_in allowed public.patients public.patients.ssn simple rows=1 error= COPY patients (id, ssn) FROM STDIN",
		"delete allowed public.patients public.patients.ssn extended rows=1 error= DELETE FROM patients WHERE ssn = $1",
	}
	evs := awaitEvents(t, p.cfg.Audit.File.Dir, len(want))
	var lines []string
	for _, e := range evs {
		lines = append(lines, describe(e))
		if e.Instance != "px-test" || e.DBUser != appUser || e.Database != appDB || e.Session == "" || e.Client == "" || e.Fingerprint == "" || e.Query == "" {
			t.Errorf("attribution missing: %+v", e)
		}
	}
	if g, w := strings.Join(lines, "\n"), strings.Join(want, "\n"); g != w {
		t.Errorf("events:\n%s\nwant:\n%s", g, w)
	}
	if evs[2].Application != "audit-test" {
		t.Errorf("application %q", evs[2].Application)
	}
	// No value anywhere in the trail or the head file.
	p.phi.Close()
	scanForCanary(t, p.dir, canary)
}

// scanForCanary fails if any file under dir holds canary (and proves it
// read some).
func scanForCanary(t *testing.T, dir, canary string) {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, []byte(canary)) {
			t.Errorf("%s holds a planted value", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no file scanned")
	}
}

// Strict mode with a sink that fails on command: every PHI statement fails
// with 58030 and no row of it reaches the client, in both protocols;
// non-PHI statements work; the trail recovers without a restart.
func TestAuditStrictRefusesPHIWhileTheSinkFails(t *testing.T) {
	var failing atomic.Bool
	ctx, p := startStrictAudit(t, WithAuditFault(func(op string) error {
		if failing.Load() {
			return errors.New("no space left on device")
		}
		return nil
	}))
	simple, ext := p.via(pgx.QueryExecModeSimpleProtocol), p.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, ext, "INSERT INTO patients (id, ssn) VALUES (1, $1)", "111-11-1111")

	failing.Store(true)
	// The first statement may find the sink healthy: its event fails to
	// write, so its rows are not served either.
	check := func(what string, c *pgx.Conn, sql string, args ...any) {
		t.Helper()
		rows, err := c.Query(ctx, sql, args...)
		n := 0
		if err == nil {
			for rows.Next() {
				n++
			}
			err = rows.Err()
		}
		if sqlstate(err) != "58030" || n != 0 {
			t.Fatalf("%s while the sink fails: %d rows, %v", what, n, err)
		}
	}
	check("simple read", simple, "SELECT ssn FROM patients")
	check("extended read", ext, "SELECT ssn FROM patients WHERE id = $1", 1)
	check("simple write", simple, "INSERT INTO patients (id, ssn) VALUES (2, '222-22-2222')")
	check("extended write", ext, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 3, "333-33-3333")
	var buf bytes.Buffer
	if _, err := simple.PgConn().CopyTo(ctx, &buf, "COPY patients (ssn) TO STDOUT"); sqlstate(err) != "58030" || buf.Len() != 0 {
		t.Fatalf("COPY TO while the sink fails: %q %v", buf.String(), err)
	}
	var one int
	if err := simple.QueryRow(ctx, "SELECT count(*) FROM visits_plain").Scan(&one); err != nil {
		t.Fatalf("non-PHI statement while the sink fails: %v", err)
	}
	if err := ext.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("non-PHI statement while the sink fails: %v", err)
	}
	var n int
	if err := p.direct(pgx.QueryExecModeSimpleProtocol).QueryRow(ctx, "SELECT count(*) FROM patients").Scan(&n); err != nil || n != 1 {
		t.Fatalf("writes refused while the sink failed reached the table: %d rows, %v", n, err)
	}

	failing.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ssn string
		err := ext.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 1).Scan(&ssn)
		if err == nil && ssn == "111-11-1111" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// 16 sessions × 1000 PHI statements, both protocols: exactly 16 000
// statement events, one unbroken chain, no duplicate seq.
func TestAuditConcurrentSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ctx, p := startStrictAudit(t)
	const sessions, each = 16, 1000
	var wg sync.WaitGroup
	for s := 0; s < sessions; s++ {
		mode := pgx.QueryExecModeSimpleProtocol
		if s%2 == 1 {
			mode = pgx.QueryExecModeCacheStatement
		}
		c := p.via(mode)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				var err error
				if i%4 == 0 {
					_, err = c.Exec(ctx, "INSERT INTO visits (id, patient_ssn) VALUES ($1, $2)", s*each+i, "ssn")
				} else {
					var v string
					err = c.QueryRow(ctx, "SELECT patient_ssn FROM visits WHERE id = $1", s*each+i-i%4).Scan(&v)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	p.phi.Close()
	evs := statementEvents(p.trail())
	if len(evs) != sessions*each {
		t.Fatalf("%d statement events, want %d", len(evs), sessions*each)
	}
	perSession := map[string]int{}
	for _, e := range evs {
		if e.Rows == nil || *e.Rows != 1 || e.Error != "" {
			t.Fatalf("event %d: outcome %v %q", e.Seq, e.Rows, e.Error)
		}
		perSession[e.Session]++
	}
	if len(perSession) != sessions {
		t.Fatalf("%d sessions in the trail", len(perSession))
	}
	st := p.phi.Auditor().Trail().Stats()
	t.Logf("%d events in %d batches (largest %d), fsync mean %v max %v", st.Events, st.Batches, st.MaxBatch,
		time.Duration(st.SyncNanos/max(st.Batches, 1)), time.Duration(st.MaxSyncNanos))
}

// A reload is recorded (config_loaded), and a key whose primary changed
// since (a `phiproxy keys rotate`) as key_rotated.
func TestAuditRecordsReloadAndRotation(t *testing.T) {
	ctx := testCtx(t)
	cfg, dir := auditCfg(t, config.AuditStrict)
	// The keys in a copy: rotating them must not touch other tests'.
	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(testCfg.Keys.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(testCfg.Keys.Dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(keys, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Keys.Dir = keys
	p := startAudited(t, cfg, dir)
	st, err := crypto.OpenStore(ctx, cfg.Keys, crypto.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := st.Rotate(crypto.ColumnKey("public.patients.ssn"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.phi.Reload(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	p.phi.Close()
	var got []string
	for _, e := range trailEvents(t, cfg.Audit.File.Dir) {
		if e.Action == audit.ActionKeyRotated || e.Action == audit.ActionConfigLoaded {
			got = append(got, e.Action+": "+e.Detail)
		}
	}
	want := fmt.Sprintf("key_rotated: key public.patients.ssn: primary key id %d", id)
	if len(got) != 2 || !strings.HasPrefix(got[0], want) || got[1] != "config_loaded: "+cfg.Path {
		t.Fatalf("reload events: %q, want %q then config_loaded", got, want)
	}
}

// An audit directory that cannot be made at start (its parent is a file):
// the proxy starts, refuses PHI with 58030, serves the rest, and serves
// PHI once the directory can be made — no restart.
func TestAuditUnwritableDirectoryAtStart(t *testing.T) {
	ctx := testCtx(t)
	cfg, dir := auditCfg(t, config.AuditStrict)
	blocker := filepath.Join(dir, "blocker")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Audit.File.Dir = filepath.Join(blocker, "audit")
	p := startAudited(t, cfg, dir)
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	var s string
	if err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 1).Scan(&s); sqlstate(err) != "58030" {
		t.Fatalf("PHI read with no audit directory: %v", err)
	}
	if err := c.QueryRow(ctx, "SELECT 'ok'").Scan(&s); err != nil {
		t.Fatalf("non-PHI statement: %v", err)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7, "777-77-7777")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.phi.Close()
	evs := statementEvents(trailEvents(t, cfg.Audit.File.Dir))
	if len(evs) == 0 || evs[len(evs)-1].Action != audit.ActionWrite || evs[len(evs)-1].Error != "" {
		t.Fatalf("trail after recovery: %v", evs)
	}
}

// Automatic logoff is audited: the session, who, and the SQLSTATE.
func TestAuditRecordsAutomaticLogoff(t *testing.T) {
	ctx := testCtx(t)
	cfg, dir := auditCfg(t, config.AuditStrict)
	cfg.Limits.IdleSessionTimeout = 200 * time.Millisecond
	p := startAudited(t, cfg, dir)
	c := connect(t, ctx, p.dsn("application_name=idle-app"), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, c, "SET phiproxy.end_user = 'dr.idle'")
	deadline := time.Now().Add(10 * time.Second)
	for {
		var logoff *audit.Event
		for _, e := range trailEvents(t, cfg.Audit.File.Dir) {
			if e.Action == audit.ActionLogoff {
				logoff = e
			}
		}
		if logoff != nil {
			if logoff.Error != "57P05" || logoff.DBUser != appUser || logoff.EndUser != "dr.idle" || logoff.Application != "idle-app" || logoff.Session == "" {
				t.Fatalf("logoff event: %+v", logoff)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no logoff event")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Statements announced before they were sent but never run (an earlier
// statement of the string or pipeline failed) are recorded as such, with
// no rows: the trail never claims a read that did not happen.
func TestAuditAnnouncedButNotRun(t *testing.T) {
	ctx, p := startStrictAudit(t)
	simple := p.via(pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, simple, "INSERT INTO patients (id, ssn) VALUES (1, '111-11-1111'), (2, '222-22-2222')")
	_, err := simple.Exec(ctx, "SELECT ssn FROM patients WHERE id = 1; SELECT ssn FROM patients WHERE id = 1/0; SELECT ssn FROM patients WHERE id = 2")
	if sqlstate(err) != "22012" {
		t.Fatalf("the string: %v", err)
	}
	// A pipeline: the second Execute is skipped after the first fails.
	ext := p.via(pgx.QueryExecModeCacheStatement)
	b := &pgx.Batch{}
	b.Queue("SELECT ssn FROM patients WHERE id = 1/$1", 0)
	b.Queue("SELECT ssn FROM patients WHERE id = $1", 2)
	if err := ext.SendBatch(ctx, b).Close(); sqlstate(err) != "22012" {
		t.Fatalf("the pipeline: %v", err)
	}
	p.phi.Close()
	var lines []string
	for _, e := range statementEvents(p.trail()) {
		if e.Action != "read" {
			continue
		}
		rows := "null"
		if e.Rows != nil {
			rows = fmt.Sprint(*e.Rows)
		}
		lines = append(lines, fmt.Sprintf("%s rows=%s error=%s reason=%s", e.Query, rows, e.Error, e.Reason))
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"SELECT ssn FROM patients WHERE id = $1 rows=1 error= reason=patients.ssn: default\n",
		"SELECT ssn FROM patients WHERE id = $1/$2 rows=0 error=22012",
		"SELECT ssn FROM patients WHERE id = $1 rows=0 error= reason=patients.ssn: default; not run: an earlier statement of its batch failed",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no event %q in:\n%s", want, got)
		}
	}
	if strings.Count(got, "not run") != 2 {
		t.Errorf("want two statements recorded as not run:\n%s", got)
	}
}

// limits.max_phi_statement_bytes bounds the statement text naming PHI
// that is planned: a longer one is refused with 54000 before parsing.
func TestMaxPHIStatementBytes(t *testing.T) {
	ctx := testCtx(t)
	cfg := *testCfg
	cfg.Limits.MaxPHIStatementBytes = 2048
	startProxy(t)
	p := serveProxy(t, ctx, &cfg)
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	long := "SELECT ssn FROM patients WHERE id IN (" + strings.Repeat("1,", 1100) + "1)"
	if _, err := c.Exec(ctx, long); sqlstate(err) != "54000" {
		t.Fatalf("a %d-byte PHI statement: %v", len(long), err)
	}
	if _, err := c.Exec(ctx, "SELECT ssn FROM patients WHERE id IN (1, 2)"); err != nil {
		t.Fatalf("a short one: %v", err)
	}
}

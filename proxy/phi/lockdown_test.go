package phi

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
)

// Two instances on one database: lockdown switched on one stops
// plaintext on both within a second — new statements and a result set in
// flight —, leaves statements that return no PHI, writes and non-PHI
// traffic alone, survives a restart (state_dir), needs a reason, and is
// audited on both.
func TestLockdownOnEveryInstance(t *testing.T) {
	ctx := testCtx(t)
	cfgA, dirA := auditCfg(t, config.AuditStrict)
	cfgA.StateDir = dirA + "/state"
	a := startAudited(t, cfgA, dirA)
	cfgB, dirB := auditCfg(t, config.AuditStrict)
	cfgB.StateDir, cfgB.Audit.Instance = dirB+"/state", "px-b"
	b := serveProxy(t, ctx, cfgB, WithAudit(cfgB.Audit, dirB+"/state/audit-head.json", "test"))
	t.Cleanup(func() {
		// The switch lives in the test database: leave it off.
		_ = a.phi.SetLockdown(context.Background(), false, "test over", "test")
	})

	ca := connect(t, ctx, a.dsn(), pgx.QueryExecModeCacheStatement)
	cb := connect(t, ctx, b.dsn(), pgx.QueryExecModeSimpleProtocol)
	for i := 1; i <= 50; i++ {
		mustExec(t, ctx, ca, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", i, "ssn-"+strings.Repeat("x", i%5))
	}
	// A result set in flight on b, fetched row by row through a cursor.
	tx, err := cb.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	mustExec(t, ctx, cb, "DECLARE c CURSOR FOR SELECT ssn FROM patients ORDER BY id")
	var ssn string
	if err := cb.QueryRow(ctx, "FETCH 1 FROM c").Scan(&ssn); err != nil {
		t.Fatal(err)
	}

	if err := a.phi.SetLockdown(ctx, true, "", "test"); err == nil {
		t.Fatal("lockdown without a reason was accepted")
	}
	if err := a.phi.SetLockdown(ctx, true, "breach drill", "test"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for !b.phi.Locked() {
		if time.Now().After(deadline) {
			t.Fatal("the other instance is not locked within a second")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cb.QueryRow(ctx, "FETCH 1 FROM c").Scan(&ssn); sqlstate(err) != "42501" {
		t.Fatalf("next row of a cursor after lockdown: %q %v", ssn, err)
	}
	for name, c := range map[string]*pgx.Conn{"a (extended)": ca, "b (simple)": connect(t, ctx, b.dsn(), pgx.QueryExecModeSimpleProtocol)} {
		if err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 1").Scan(&ssn); sqlstate(err) != "42501" || !strings.Contains(err.Error(), "lockdown") {
			t.Fatalf("%s: PHI read under lockdown: %v", name, err)
		}
		var id int
		if err := c.QueryRow(ctx, "SELECT id FROM patients WHERE ssn = 'ssn-x'").Scan(&id); err != nil {
			t.Fatalf("%s: a statement that returns no PHI: %v", name, err)
		}
		if _, err := c.Exec(ctx, "UPDATE patients SET ssn = 'ssn-new' WHERE id = 2"); err != nil {
			t.Fatalf("%s: a write under lockdown: %v", name, err)
		}
		if err := c.QueryRow(ctx, "SELECT 'plain'").Scan(&ssn); err != nil {
			t.Fatalf("%s: non-PHI statement: %v", name, err)
		}
	}
	if _, err := ca.Exec(ctx, "COPY patients (ssn) TO STDOUT"); sqlstate(err) != "42501" {
		t.Fatalf("COPY TO under lockdown: %v", err)
	}

	// A restarted instance stays locked, from state_dir alone.
	c := *cfgA
	c.Audit.File.Dir = t.TempDir()
	restarted := serveProxy(t, ctx, &c)
	if !restarted.phi.Locked() || !restarted.phi.Lockdown().File.On {
		t.Fatalf("restarted instance: %+v", restarted.phi.Lockdown())
	}

	if err := b.phi.SetLockdown(ctx, false, "drill over", "test"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Second)
	for a.phi.Locked() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.phi.Locked() {
		// a's own state_dir still says on: either says so keeps it locked.
		if !a.phi.Lockdown().File.On || a.phi.Lockdown().Database.On {
			t.Fatalf("a after b's off: %+v", a.phi.Lockdown())
		}
		if err := a.phi.SetLockdown(ctx, false, "drill over", "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := ca.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 1").Scan(&ssn); err != nil {
		t.Fatalf("PHI read after lockdown off: %v", err)
	}
	a.phi.Close()
	b.phi.Close()
	for name, dir := range map[string]string{"a": cfgA.Audit.File.Dir, "b": cfgB.Audit.File.Dir} {
		var got []string
		for _, e := range trailEvents(t, dir) {
			if e.Action == audit.ActionLockdown {
				got = append(got, e.Detail)
			}
		}
		if len(got) < 2 || !strings.Contains(got[0], "lockdown on") || !strings.Contains(got[0], "breach drill") || !strings.Contains(got[len(got)-1], "lockdown off") {
			t.Fatalf("%s's lockdown events: %q", name, got)
		}
	}
}

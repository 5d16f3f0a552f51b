package phi

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
)

// Issue 18, item 11: the upstream restarts (fast shutdown) while one
// session is inside a transaction and another inside COPY FROM STDIN.
// Both clients get 57P01 or 08006 — never a silent replay on a new
// upstream connection — nothing they sent is committed, and new sessions
// work as soon as PostgreSQL is back.
func TestUpstreamRestartMidTransactionAndCopy(t *testing.T) {
	ctx := testCtx(t)
	cfg, dir := auditCfg(t, config.AuditStrict)
	p := startAudited(t, cfg, dir)
	inTx := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, inTx, "BEGIN")
	mustExec(t, ctx, inTx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7701, "restart-tx")

	copier := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	pr, pw := io.Pipe()
	copyDone := make(chan error, 1)
	go func() {
		_, err := copier.PgConn().CopyFrom(ctx, pr, "COPY patients (id, ssn) FROM STDIN")
		copyDone <- err
	}()
	if _, err := fmt.Fprintf(pw, "7702\trestart-copy\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the row reached the server

	if err := testCluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	// The COPY learns of it when it next writes, at the latest.
	_, _ = fmt.Fprintf(pw, "7703\trestart-copy-2\n")
	pw.Close()
	select {
	case err := <-copyDone:
		t.Logf("COPY: %v", err)
		if c := sqlstate(err); c != "57P01" && c != "08006" {
			t.Errorf("COPY: got %v, want 57P01 or 08006", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the COPY never ended")
	}
	if err := testCluster.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	// The transaction's session is gone: its next statement fails, it is
	// not run on a fresh upstream connection.
	_, err := inTx.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7704, "restart-tx-2")
	t.Logf("transaction: %v", err)
	if c := sqlstate(err); err == nil || (c != "57P01" && c != "08006" && !inTx.IsClosed()) {
		t.Fatalf("after the restart the transaction's session answered %v (SQLSTATE %q)", err, c)
	}
	if _, err := inTx.Exec(ctx, "COMMIT"); err == nil {
		t.Fatal("COMMIT succeeded on a session whose upstream restarted")
	}

	// New sessions work as soon as PostgreSQL is back.
	deadline := time.Now().Add(20 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := pgx.Connect(cctx, p.dsn())
		if err == nil {
			var n int
			err = c.QueryRow(cctx, "SELECT count(*) FROM patients WHERE id IN (7701, 7702, 7703, 7704)").Scan(&n)
			c.Close(cctx)
			cancel()
			if err == nil {
				if n != 0 {
					t.Fatalf("%d rows sent before or after the restart were committed", n)
				}
				break
			}
		} else {
			cancel()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no working session 20 s after the restart: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	stillWorks(t, ctx, connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement))
	// Audited: the COPY the restart cut is an event with its failure
	// (the SQLSTATE, or the session's end), not a success.
	p.phi.Close()
	var copyEv *audit.Event
	for _, e := range statementEvents(trailEvents(t, cfg.Audit.File.Dir)) {
		if e.Action == audit.ActionCopyIn {
			copyEv = e
		}
	}
	if copyEv == nil || (copyEv.Error == "" && !strings.Contains(copyEv.Reason, "session ended")) {
		t.Fatalf("the COPY's audit event: %+v", copyEv)
	}
}

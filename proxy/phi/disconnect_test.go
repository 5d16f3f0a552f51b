package phi

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/audit"
)

// Issue 18, item 12: clients killed mid-transaction, mid-COPY and
// mid-pipeline. Each time the upstream transaction is rolled back and
// its connection closed; after 1000 such disconnects the proxy's
// goroutines and heap are back to their baseline.
func TestClientKilledMidStatement(t *testing.T) {
	ctx, p := start(t)
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
	backends := func() int {
		var n int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()", appUser).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	settle := func() (int, uint64) {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return runtime.NumGoroutine(), m.HeapAlloc
	}
	// Warm up (catalog pool, caches), then take the baseline.
	warm := p.via(pgx.QueryExecModeCacheStatement)
	stillWorks(t, ctx, warm)
	warm.Close(ctx)
	time.Sleep(200 * time.Millisecond)
	baseBackends := backends()
	baseG, baseHeap := settle()

	kills := []func(c net.Conn, id int) error{
		// mid-transaction
		func(c net.Conn, id int) error {
			_, err := c.Write(rawFrame('Q', []byte(fmt.Sprintf("BEGIN; INSERT INTO patients (id, ssn) VALUES (%d, 'kill-%d')\x00", id, id))))
			return err
		},
		// mid-COPY
		func(c net.Conn, id int) error {
			msgs := rawFrame('Q', []byte("COPY patients (id, ssn) FROM STDIN\x00"))
			msgs = append(msgs, rawFrame('d', []byte(fmt.Sprintf("%d\tkill-%d\n", id, id)))...)
			_, err := c.Write(msgs)
			return err
		},
		// mid-pipeline: no Sync
		func(c net.Conn, id int) error {
			msgs := parseFrame("", "INSERT INTO patients (id, ssn) VALUES ($1, $2)")
			msgs = append(msgs, rawFrame('B', bindBody("", nil, [][]byte{[]byte(fmt.Sprint(id)), []byte(fmt.Sprintf("kill-%d", id))}))...)
			msgs = append(msgs, rawFrame('E', []byte("\x00\x00\x00\x00\x00"))...)
			_, err := c.Write(msgs)
			return err
		},
	}
	const total = 1000
	var wg sync.WaitGroup
	errs := make(chan error, total)
	sem := make(chan struct{}, 8)
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			pc, err := pgconn.Connect(cctx, p.dsn())
			if err != nil {
				errs <- err
				return
			}
			hc, err := pc.Hijack()
			if err != nil {
				errs <- err
				return
			}
			if err := kills[i%len(kills)](hc.Conn, 100000+i); err != nil {
				errs <- err
			}
			if i%2 == 0 {
				time.Sleep(time.Millisecond) // sometimes after the server started on it
			}
			// Killed: a reset, not a Terminate.
			if tc, ok := hc.Conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			hc.Conn.Close()
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	deadline := time.Now().Add(20 * time.Second)
	for {
		g, heap := settle()
		b := backends()
		if g <= baseG+5 && b <= baseBackends && heap <= baseHeap+16<<20 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("after %d disconnects: %d goroutines (baseline %d), %d backends (baseline %d), heap %d MB (baseline %d MB)\n%s",
				total, g, baseG, b, baseBackends, heap>>20, baseHeap>>20, buf[:n])
		}
		time.Sleep(100 * time.Millisecond)
	}
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM patients WHERE id >= 100000").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows of killed sessions were committed (%v)", n, err)
	}
	stillWorks(t, ctx, p.via(pgx.QueryExecModeCacheStatement))
}

// Issue 18, item 11: the upstream restarts (fast shutdown) while one
// session is inside a transaction and another inside COPY FROM STDIN.
// Both clients get 57P01 or 08006 — never a silent replay on a new
// upstream connection — nothing they sent is committed, and new sessions
// work as soon as PostgreSQL is back.
func TestUpstreamRestartMidTransactionAndCopy(t *testing.T) {
	ctx, p := startStrictAudit(t)
	inTx := p.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, inTx, "BEGIN")
	mustExec(t, ctx, inTx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7701, "restart-tx")

	copier := p.via(pgx.QueryExecModeCacheStatement)
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
	stillWorks(t, ctx, p.via(pgx.QueryExecModeCacheStatement))
	// Audited: the COPY the restart cut is an event with its failure
	// (the SQLSTATE, or the session's end), not a success.
	p.phi.Close()
	var copyEv *audit.Event
	for _, e := range statementEvents(p.trail()) {
		if e.Action == audit.ActionCopyIn {
			copyEv = e
		}
	}
	if copyEv == nil || (copyEv.Error == "" && !strings.Contains(copyEv.Reason, "session ended")) {
		t.Fatalf("the COPY's audit event: %+v", copyEv)
	}
}

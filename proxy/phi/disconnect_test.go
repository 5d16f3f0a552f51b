package phi

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 18, item 12: clients killed mid-transaction, mid-COPY and
// mid-pipeline. Each time the upstream transaction is rolled back and
// its connection closed; after 1000 such disconnects the proxy's
// goroutines and heap are back to their baseline.
func TestClientKilledMidStatement(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
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
	warm := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
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
	stillWorks(t, ctx, connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement))
}

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Issue 18, item 17: SIGKILL of the proxy under load. On restart the
// audit trail verifies, its start event records the unclean stop, every
// PHI read whose row reached a client has its event, a write's event is
// lost only within the documented group-commit window before the crash
// (docs/audit.md: at most 50 ms), and there are no more events than
// statements that were sent.
func TestSIGKILLUnderLoadKeepsTheAuditTrail(t *testing.T) {
	p := startPHIProxy(t)
	e := fixture
	dsn := appDSN(p.addr(), phiDB)

	const workers = 4
	var reads, writes, sent atomic.Int64
	var mu sync.Mutex
	var writeTimes []time.Time // when each INSERT was answered
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(ctx)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := 100000 + w*100000 + i
				sent.Add(1)
				if _, err := conn.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", id, fmt.Sprintf("kill-%d", id)); err != nil {
					return // the proxy is gone
				}
				writes.Add(1)
				mu.Lock()
				writeTimes = append(writeTimes, time.Now())
				mu.Unlock()
				sent.Add(1)
				var ssn string
				if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", id).Scan(&ssn); err != nil {
					return
				}
				reads.Add(1)
			}
		}(w)
	}
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exit := <-p.done
	p.done <- exit // for the cleanup's wait
	close(stop)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("no load ran before the kill")
	}

	// Restart on the same config (same port, same trail).
	restart := exec.Command(e.binary, "serve", "--config", p.config)
	restart.Env = append(os.Environ(), "PGPASSFILE="+e.pgpass)
	out := &syncBuffer{}
	restart.Stdout, restart.Stderr = out, out
	if err := restart.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		restart.Process.Signal(syscall.SIGTERM)
		restart.Wait()
		if t.Failed() {
			t.Logf("restarted phiproxy output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted proxy does not listen:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// One PHI statement after the restart, so the trail has a new event.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM patients WHERE ssn = $1", "nobody").Scan(&n); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	verify := exec.Command(e.binary, "audit", "verify", "--config", p.config)
	verify.Env = append(os.Environ(), "PGPASSFILE="+e.pgpass)
	if vout, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("audit verify after SIGKILL: %v\n%s", err, vout)
	}

	// Count the events.
	files, err := filepath.Glob(filepath.Join(filepath.Dir(p.config), "audit", "audit-*.jsonl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no trail files: %v", err)
	}
	var insertEvents, selectEvents int64
	var starts []map[string]any
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				continue // a line the crash cut short is verify's business
			}
			q, _ := ev["query"].(string)
			switch {
			case ev["action"] == "start":
				starts = append(starts, ev)
			case strings.HasPrefix(q, "INSERT INTO patients (id, ssn) VALUES"):
				insertEvents++
			case strings.HasPrefix(q, "SELECT ssn FROM patients WHERE id ="):
				selectEvents++
			}
		}
		fh.Close()
	}
	if len(starts) < 2 {
		t.Fatalf("%d start events, want one per run", len(starts))
	}
	if clean, ok := starts[len(starts)-1]["clean"].(bool); !ok || clean {
		t.Fatalf("the start event after SIGKILL says clean=%v", starts[len(starts)-1]["clean"])
	}
	// Every read answered has its event; writes answered within the
	// group-commit window before the kill may lack theirs (with a margin
	// for scheduling on a loaded machine); none beyond those sent.
	if selectEvents < reads.Load() {
		t.Fatalf("%d SELECTs returned their row, the trail has %d events for them", reads.Load(), selectEvents)
	}
	recent := 0
	for _, at := range writeTimes {
		if at.After(killed.Add(-250 * time.Millisecond)) {
			recent++
		}
	}
	if lost := writes.Load() - insertEvents; lost > int64(recent) {
		t.Fatalf("%d INSERTs answered lack their event, only %d were answered in the 250 ms before the kill", lost, recent)
	}
	if insertEvents+selectEvents > sent.Load() {
		t.Fatalf("the trail has %d events for %d statements sent", insertEvents+selectEvents, sent.Load())
	}
	t.Logf("%d INSERTs and %d SELECTs answered before SIGKILL; %d + %d events", writes.Load(), reads.Load(), insertEvents, selectEvents)
}

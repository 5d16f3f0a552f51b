package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/phiproxy/phiproxy/audit"
)

// The audit trail of the real binary: exported to Kafka, cancel requests
// recorded, and kept through a SIGKILL under load.

// `phiproxy serve` with audit.kafka ships every line of its trail to
// Kafka (franz-go's in-process cluster), byte for byte, keyed by the
// instance, in order.
func TestServeExportsTheTrailToKafka(t *testing.T) {
	f := phiFixture(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "phi-audit"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	p := startProxy(t, proxyOpts{catalogDB: phiDB, extra: f.extra +
		fmt.Sprintf("audit: {instance: px-kafka, kafka: {brokers: [%s], topic: phi-audit}}\n", strings.Join(brokers, ", "))})
	dsn := appDSN(p.addr(), phiDB)
	for _, q := range []string{
		"INSERT INTO patients (id, name, ssn) VALUES (1, 'k', 'KAFKA-CANARY-SSN')",
		"SELECT ssn FROM patients WHERE ssn = 'KAFKA-CANARY-SSN'",
	} {
		if out, err := psql(t, dsn, "-c", q); err != nil {
			t.Fatalf("%s: %v\n%s", q, err, out)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("phi-audit"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got [][]byte
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) != "px-kafka" {
				t.Errorf("record key %q", r.Key)
			}
			got = append(got, r.Value)
		})
		if n := countReads(got); n >= 1 {
			break
		}
	}
	lines := trailLines(t, p)
	if len(got) == 0 || len(got) > len(lines) {
		t.Fatalf("%d records in Kafka, %d lines in the trail", len(got), len(lines))
	}
	for i, v := range got {
		if !bytes.Equal(v, lines[i]) {
			t.Fatalf("record %d differs from line %d of the trail:\n%s\n%s", i, i+1, v, lines[i])
		}
		if bytes.Contains(v, []byte("KAFKA-CANARY")) {
			t.Fatalf("a planted value in Kafka: %s", v)
		}
	}
}

func countReads(vals [][]byte) int {
	n := 0
	for _, v := range vals {
		if bytes.Contains(v, []byte(`"action":"read"`)) {
			n++
		}
	}
	return n
}

// Cancel requests are audited: a guessed key (nothing cancelled) and a
// real cancel (forwarded), each with the client's address.
func TestCancelRequestsAudited(t *testing.T) {
	p := startPHIProxy(t)
	// A guessed key.
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	req := make([]byte, 16)
	binary.BigEndian.PutUint32(req[0:], 16)
	binary.BigEndian.PutUint32(req[4:], 80877102)
	binary.BigEndian.PutUint32(req[8:], 4242)
	binary.BigEndian.PutUint32(req[12:], 0xdeadbeef)
	c.Write(req)
	c.Close()
	// A real cancel of a running statement.
	conn, err := pgx.Connect(context.Background(), appDSN(p.addr(), phiDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := conn.Exec(ctx, "SELECT pg_sleep(10)"); err == nil || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("the sleep was not cancelled: %v", err)
	}
	eventually(t, 5*time.Second, func() string {
		var denied, allowed bool
		lines := trailLines(t, p)
		for _, line := range lines {
			ev, err := audit.Parse(line)
			if err != nil || ev.Action != audit.ActionCancel || !strings.HasPrefix(ev.Client, "127.0.0.1:") {
				continue
			}
			denied = denied || ev.Decision == audit.DecisionDenied
			allowed = allowed || ev.Decision == audit.DecisionAllowed
		}
		if denied && allowed {
			return ""
		}
		return fmt.Sprintf("cancel events: denied %v, forwarded %v\n%s", denied, allowed, bytes.Join(lines, []byte("\n")))
	})
}

// Issue 18, item 17: SIGKILL of the proxy under load. On restart the
// audit trail verifies, its start event records the unclean stop, every
// PHI read whose row reached a client has its event, a write's event is
// lost only within the documented group-commit window before the crash
// (docs/audit.md: at most 50 ms), and there are no more events than
// statements that were sent.
func TestSIGKILLUnderLoadKeepsTheAuditTrail(t *testing.T) {
	p := startPHIProxy(t)
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
	p.exit(t, syscall.SIGKILL)
	close(stop)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("no load ran before the kill")
	}

	// Restart on the same config (same port, same trail).
	restarted := &proxy{port: p.port, config: p.config}
	restarted.serve(t)
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

	if out, code := phiproxyCmd(t, "audit", "verify", "--config", p.config); code != 0 {
		t.Fatalf("audit verify after SIGKILL: exit %d\n%s", code, out)
	}

	// Count the events.
	var insertEvents, selectEvents int64
	var starts []map[string]any
	for _, line := range trailLines(t, p) {
		var ev map[string]any
		if err := json.Unmarshal(line, &ev); err != nil {
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

// trailLines returns every line of p's audit trail, in order, as
// audit.Reader reads them.
func trailLines(t *testing.T, p *proxy) [][]byte {
	t.Helper()
	segs, err := audit.Segments(filepath.Join(filepath.Dir(p.config), "audit"))
	if err != nil {
		t.Fatal(err)
	}
	r := audit.NewReader(segs)
	defer r.Close()
	var lines [][]byte
	for r.Next() {
		lines = append(lines, bytes.Clone(r.Line().Bytes))
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

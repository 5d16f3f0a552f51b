package audit

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgerr"
)

const testTopic = "phiproxy-audit"

// spoolWriter writes trail files as the writer does (Event.Marshal, a
// chain, rotation to a file named by its first seq) and plays the
// writer's Durable and Notify.
type spoolWriter struct {
	t        testing.TB
	dir      string
	instance string
	seq      uint64
	prev     string
	f        *os.File
	mu       sync.Mutex
	lines    [][]byte
	durable  atomic.Uint64
	notify   chan struct{}
}

func newSpoolWriter(t testing.TB, dir, instance string) *spoolWriter {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w := &spoolWriter{t: t, dir: dir, instance: instance, prev: ZeroHash, notify: make(chan struct{}, 1)}
	t.Cleanup(func() {
		if w.f != nil {
			w.f.Close()
		}
	})
	return w
}

// rotate makes the next line start a new file.
func (w *spoolWriter) rotate() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// line marshals the next event.
func (w *spoolWriter) line() []byte {
	w.seq++
	rows := int64(w.seq % 7)
	ev := &Event{
		Seq: w.seq, TS: FormatTime(time.Now()), Instance: w.instance, Session: "s-1", DBUser: "app",
		Roles: []string{"clinician"}, EndUser: "dr.who", Application: "emr", Client: "10.0.0.7",
		Database: "clinic", TLS: true, Action: ActionRead, Relations: []string{"public.patients"},
		Columns: []string{"public.patients.ssn"}, Decision: DecisionAllowed,
		Fingerprint: "f00d", Query: "SELECT ssn FROM patients WHERE id = $1", Rows: &rows, Prev: w.prev,
	}
	b, err := ev.Marshal()
	if err != nil {
		w.t.Fatal(err)
	}
	w.prev = ev.Hash
	return b
}

func (w *spoolWriter) file() *os.File {
	if w.f == nil {
		f, err := os.OpenFile(filepath.Join(w.dir, FileName(w.seq+1)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			w.t.Fatal(err)
		}
		w.f = f
	}
	return w.f
}

// write appends n events and makes them durable.
func (w *spoolWriter) write(n int) {
	w.append(n)
	w.sync()
}

// append appends n events without making them durable.
func (w *spoolWriter) append(n int) {
	f := w.file()
	var buf []byte
	for range n {
		b := w.line()
		w.mu.Lock()
		w.lines = append(w.lines, b)
		w.mu.Unlock()
		buf = append(append(buf, b...), '\n')
	}
	if _, err := f.Write(buf); err != nil {
		w.t.Fatal(err)
	}
}

// sync makes what was written durable and notifies.
func (w *spoolWriter) sync() {
	w.durable.Store(w.seq)
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *spoolWriter) Durable() uint64 { return w.durable.Load() }

func (w *spoolWriter) Lines() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([][]byte(nil), w.lines...)
}

func testLogger(t *testing.T) (*slog.Logger, *testenv.Buffer) {
	buf := &testenv.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("exporter log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// runExporter starts Run; the returned stop cancels it, waits and closes.
func runExporter(t *testing.T, e *Exporter) (stop func()) {
	e.pollInterval = 50 * time.Millisecond
	e.maxBackoff = 500 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			e.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if !testenv.Eventually(d, 10*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// consume reads the topic from its start until want records came (and
// a little longer, to see any extra).
func consume(t *testing.T, brokers []string, want int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(testTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	extra := time.Time{}
	for {
		wait := time.Until(deadline)
		if !extra.IsZero() {
			wait = time.Until(extra)
		}
		if wait <= 0 {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
		if len(recs) >= want && extra.IsZero() {
			extra = time.Now().Add(300 * time.Millisecond)
		}
	}
	if len(recs) < want {
		t.Fatalf("consumed %d records, want %d", len(recs), want)
	}
	return recs
}

// checkExported checks the records against the trail's lines: after
// dropping repeats of a seq already seen (at least once), the values are
// the lines byte for byte, in order, keyed by the instance, on one
// partition.
func checkExported(t *testing.T, recs []*kgo.Record, lines [][]byte, instance string) (dups int) {
	t.Helper()
	seen := map[uint64]bool{}
	var got [][]byte
	for _, r := range recs {
		if string(r.Key) != instance {
			t.Fatalf("record key %q, want %q", r.Key, instance)
		}
		if r.Partition != recs[0].Partition {
			t.Fatalf("records on partitions %d and %d: one instance must stay on one partition", recs[0].Partition, r.Partition)
		}
		seq, err := lineSeq(r.Value)
		if err != nil {
			t.Fatalf("record value: %v", err)
		}
		if seen[seq] {
			dups++
			continue
		}
		seen[seq] = true
		got = append(got, r.Value)
	}
	if len(got) != len(lines) {
		t.Fatalf("%d distinct events exported, want %d", len(got), len(lines))
	}
	for i := range lines {
		if !bytes.Equal(got[i], lines[i]) {
			t.Fatalf("exported event %d differs from the trail's line:\n got %s\nwant %s", i+1, got[i], lines[i])
		}
	}
	return dups
}

func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(3, testTopic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func kafkaConfig(c *kfake.Cluster, maxBacklog int64) *config.AuditKafka {
	return &config.AuditKafka{Brokers: c.ListenAddrs(), Topic: testTopic, MaxBacklog: maxBacklog, ClientID: "phiproxy-test"}
}

// awayExporter is an exporter, with a max_backlog of 5, of a new trail to
// a broker that nothing listens on.
func awayExporter(t *testing.T) (*Exporter, *spoolWriter) {
	t.Helper()
	w := newSpoolWriter(t, filepath.Join(t.TempDir(), "audit"), "px-1")
	cfg := &config.AuditKafka{Brokers: []string{fmt.Sprintf("127.0.0.1:%d", freePort(t))}, Topic: testTopic, MaxBacklog: 5}
	log, _ := testLogger(t)
	e, err := NewExporter(cfg, w.dir, t.TempDir(), "px-1", w.Durable, w.notify, log)
	if err != nil {
		t.Fatal(err)
	}
	return e, w
}

// exportRig is what most export tests start from: a cluster, the trail of
// instance px-1 and the exporter's state directory.
type exportRig struct {
	c     *kfake.Cluster
	cfg   *config.AuditKafka
	w     *spoolWriter
	state string
	log   *slog.Logger
	logs  *testenv.Buffer
}

func newExportRig(t *testing.T, maxBacklog int64, opts ...kfake.Opt) *exportRig {
	c := newCluster(t, opts...)
	log, logs := testLogger(t)
	return &exportRig{
		c:     c,
		cfg:   kafkaConfig(c, maxBacklog),
		w:     newSpoolWriter(t, filepath.Join(t.TempDir(), "audit"), "px-1"),
		state: t.TempDir(),
		log:   log,
		logs:  logs,
	}
}

// exporter opens an exporter of the rig's trail on the rig's state.
func (r *exportRig) exporter(t *testing.T, opts ...kgo.Opt) *Exporter {
	t.Helper()
	e, err := newExporter(r.cfg, r.w.dir, r.state, "px-1", r.w.Durable, r.w.notify, r.log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// exportFirst writes n events and exports them with an exporter that is
// stopped once it has: the state a restarted proxy finds.
func (r *exportRig) exportFirst(t *testing.T, n int) {
	t.Helper()
	r.w.write(n)
	e := r.exporter(t)
	stop := runExporter(t, e)
	waitFor(t, fmt.Sprintf("%d events exported", n), 30*time.Second, func() bool { return e.Exported() == uint64(n) })
	stop()
}

func TestExportSendsEachDurableLineInOrder(t *testing.T) {
	c := newCluster(t)
	dir, state := t.TempDir(), t.TempDir()
	w := newSpoolWriter(t, filepath.Join(dir, "audit"), "px-1")
	w.write(150)
	w.rotate()
	w.write(100)
	w.write(40)
	// Events 291..300 are written but not durable yet, and the writer is
	// in the middle of event 301: half of it is in the file.
	w.append(10)
	next := w.line()
	if _, err := w.file().Write(next[:len(next)/2]); err != nil {
		t.Fatal(err)
	}
	log, _ := testLogger(t)
	e, err := NewExporter(kafkaConfig(c, 1000), w.dir, state, "px-1", w.Durable, w.notify, log)
	if err != nil {
		t.Fatal(err)
	}
	runExporter(t, e)
	waitFor(t, "290 events exported", 30*time.Second, func() bool { return e.Exported() == 290 })
	time.Sleep(200 * time.Millisecond)
	if got := e.Exported(); got != 290 || e.Backlog() != 0 {
		t.Fatalf("exported %d (backlog %d) with 290 durable", got, e.Backlog())
	}
	w.sync()
	waitFor(t, "300 events exported", 30*time.Second, func() bool { return e.Exported() == 300 })
	if dups := checkExported(t, consume(t, c.ListenAddrs(), 300), w.Lines(), "px-1"); dups != 0 {
		t.Errorf("%d duplicates without any failure", dups)
	}

	// The writer finishes event 301 and makes it durable.
	if _, err := w.file().Write(append(next[len(next)/2:], '\n')); err != nil {
		t.Fatal(err)
	}
	w.lines = append(w.lines, next)
	w.sync()
	waitFor(t, "event 301 exported", 30*time.Second, func() bool { return e.Exported() == 301 })
	checkExported(t, consume(t, c.ListenAddrs(), 301), w.Lines(), "px-1")
	if e.Backlog() != 0 || e.Admit() != nil {
		t.Errorf("backlog %d, Admit %v after the export caught up", e.Backlog(), e.Admit())
	}

	fi, err := os.Stat(filepath.Join(state, StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %04o, want 0600", fi.Mode().Perm())
	}
	var st exportState
	waitFor(t, "the state file to name seq 301", 5*time.Second, func() bool {
		st, err = readExportState(filepath.Join(state, StateFileName))
		return err == nil && st.Seq == 301
	})
	if st.Hash != lineHash(next) || st.Topic != testTopic || st.Instance != "px-1" {
		t.Errorf("state %+v; want seq 301, its hash, the topic and the instance", st)
	}
}

// fastRetries shorten franz-go's backoff and metadata age, so that tests
// of outages do not wait for its production timings.
func fastRetries() []kgo.Opt {
	return []kgo.Opt{kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }), kgo.MetadataMinAge(50 * time.Millisecond)}
}

// freePort is a port nothing listens on now.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestExportSurvivesBrokerOutage(t *testing.T) {
	t.Run("while it runs", func(t *testing.T) { testBrokerOutage(t, false) })
	t.Run("and a restart of the proxy during it", func(t *testing.T) { testBrokerOutage(t, true) })
}

// testBrokerOutage stops the cluster while events are written and
// exported, and starts it again (same port, same data); with restart, the
// exporter is replaced by a new one on the same state during the outage.
func testBrokerOutage(t *testing.T, restart bool) {
	port, data := freePort(t), t.TempDir()
	opts := []kfake.Opt{kfake.Ports(port), kfake.DataDir(data)}
	r := newExportRig(t, 50, opts...)
	w := r.w
	e := r.exporter(t, fastRetries()...)
	e.shutdownGrace = 200 * time.Millisecond
	stop := runExporter(t, e)

	// The writer keeps writing while the brokers go away.
	const total = 1000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < total/10; i++ {
			if i == 60 {
				w.rotate()
			}
			w.write(10)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	waitFor(t, "some events exported", 30*time.Second, func() bool { return e.Exported() >= 100 })
	r.c.Close()
	waitFor(t, "a backlog past max_backlog", 30*time.Second, func() bool { return e.Backlog() > 50 })
	exported := e.Exported()
	err := e.Admit()
	if pgerr.CodeOf(err) != pgerr.IOError {
		t.Fatalf("Admit with a backlog of %d past max_backlog 50: %v, want a 58030 refusal", e.Backlog(), err)
	}
	if !strings.Contains(err.Error(), "events not exported (audit.kafka.max_backlog 50)") {
		t.Errorf("Admit's message: %v", err)
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	if got := e.Exported(); got != exported {
		t.Fatalf("exported went from %d to %d while the brokers were away", exported, got)
	}
	if restart {
		// A batch may be in flight to the brokers that went away: the
		// idempotent producer cannot give it up, Run must stop anyway.
		start := time.Now()
		stop()
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("the exporter took %v to stop during the outage (grace 200ms)", d)
		}
		e = r.exporter(t, fastRetries()...)
		if e.Exported() != exported {
			t.Fatalf("the new exporter starts after seq %d, the old one had exported %d", e.Exported(), exported)
		}
		runExporter(t, e)
	}

	c2 := newCluster(t, opts...)
	waitFor(t, "every event exported after the brokers came back", 60*time.Second, func() bool { return e.Exported() == total })
	if err := e.Admit(); err != nil {
		t.Errorf("Admit after the export caught up: %v", err)
	}
	recs := consume(t, c2.ListenAddrs(), total)
	dups := checkExported(t, recs, w.Lines(), "px-1")
	t.Logf("%d records, %d repeated (at least once)", len(recs), dups)
}

func TestExportResumesAfterRestart(t *testing.T) {
	r := newExportRig(t, 1000)
	w := r.w
	r.exportFirst(t, 100)

	// Events written while no exporter runs, across a rotation.
	w.write(30)
	w.rotate()
	w.write(70)
	e2 := r.exporter(t)
	if e2.Exported() != 100 || e2.Backlog() != 100 {
		t.Fatalf("restarted exporter: exported %d, backlog %d; want 100, 100", e2.Exported(), e2.Backlog())
	}
	runExporter(t, e2)
	waitFor(t, "200 events exported", 30*time.Second, func() bool { return e2.Exported() == 200 })
	recs := consume(t, r.c.ListenAddrs(), 200)
	if dups := checkExported(t, recs, w.Lines(), "px-1"); dups != 0 {
		t.Errorf("%d events sent twice across a clean restart", dups)
	}

	for _, tc := range []struct {
		name, instance string
		events         int
		want           string
	}{
		{"a different trail is refused", "px-2", 250, "not the one that was exported"},
		{"a shorter trail is refused", "px-1", 20, "ends at seq 20"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := newSpoolWriter(t, filepath.Join(t.TempDir(), "audit"), tc.instance)
			other.write(tc.events)
			_, err := NewExporter(r.cfg, other.dir, r.state, "px-1", other.Durable, other.notify, r.log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewExporter on a trail of %s with %d events, with the state of px-1's 200: %v", tc.instance, tc.events, err)
			}
		})
	}
}

func TestExportAdmit(t *testing.T) {
	e, w := awayExporter(t)
	defer e.Close()
	w.write(5)
	if err := e.Admit(); err != nil {
		t.Fatalf("Admit at a backlog of max_backlog: %v", err)
	}
	w.write(1)
	err := e.Admit()
	pe := pgerr.As(err)
	if pe == nil || pe.Code != pgerr.IOError || e.Backlog() != 6 {
		t.Fatalf("Admit at a backlog of %d over 5: %v", e.Backlog(), err)
	}
	want := "audit export to Kafka is behind: 6 events not exported (audit.kafka.max_backlog 5); PHI is not served until it catches up"
	if pe.Message != want || pe.Hint == "" {
		t.Errorf("message %q hint %q; want %q and a hint", pe.Message, pe.Hint, want)
	}
}

func TestLineSeq(t *testing.T) {
	for _, tc := range []struct {
		line string
		seq  uint64
		ok   bool
	}{
		{`{"v":1,"seq":42,"ts":"x"}`, 42, true},
		{`{"v":1,"seq":18446744073709551615,"ts":"x"}`, 1<<64 - 1, true},
		{`{"v":1,"seq":18446744073709551616,"ts":"x"}`, 0, false},
		{`{"v":1,"seq":42}`, 0, false},
		{`{"v":1,"seq":,"ts":"x"}`, 0, false},
		{`{"seq":42,"v":1}`, 0, false},
		{``, 0, false},
	} {
		seq, err := lineSeq([]byte(tc.line))
		if (err == nil) != tc.ok || seq != tc.seq {
			t.Errorf("lineSeq(%s) = %d, %v; want %d ok=%v", tc.line, seq, err, tc.seq, tc.ok)
		}
	}
}

func TestExportSendsAgainWhatWasNotRecorded(t *testing.T) {
	r := newExportRig(t, 1000)
	w := r.w
	r.exportFirst(t, 100)
	// A crash after the brokers acknowledged 51..100 but before the
	// state file said so.
	if err := writeExportState(filepath.Join(r.state, StateFileName), exportState{Topic: testTopic, Instance: "px-1", Seq: 50, Hash: lineHash(w.Lines()[49])}); err != nil {
		t.Fatal(err)
	}
	e2 := r.exporter(t)
	runExporter(t, e2)
	waitFor(t, "100 events exported again", 30*time.Second, func() bool { return e2.Exported() == 100 })
	if dups := checkExported(t, consume(t, r.c.ListenAddrs(), 150), w.Lines(), "px-1"); dups != 50 {
		t.Errorf("%d repeated events, want 50 (51..100 sent again)", dups)
	}
}

func TestExportRetriesAFailedBatch(t *testing.T) {
	// No topic yet: franz-go gives up on the records after its unknown
	// topic retries, and the exporter sends them again until the topic
	// exists.
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	w := newSpoolWriter(t, filepath.Join(t.TempDir(), "audit"), "px-1")
	log, _ := testLogger(t)
	e, err := newExporter(kafkaConfig(c, 5), w.dir, t.TempDir(), "px-1", w.Durable, w.notify, log, fastRetries()...)
	if err != nil {
		t.Fatal(err)
	}
	runExporter(t, e)
	t0 := time.Now()
	w.write(40)
	waitFor(t, "a failed batch", 60*time.Second, func() bool { return e.Stats().Failures > 0 })
	t.Logf("the first batch failed after %v", time.Since(t0))
	if pgerr.CodeOf(e.Admit()) != pgerr.IOError || e.Exported() != 0 {
		t.Fatalf("nothing exported yet: exported %d, Admit %v", e.Exported(), e.Admit())
	}
	w.write(40)

	admin, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	topic := kmsg.NewCreateTopicsRequestTopic()
	topic.Topic, topic.NumPartitions, topic.ReplicationFactor = testTopic, 3, 1
	req.Topics = append(req.Topics, topic)
	if _, err := req.RequestWith(testenv.Context(t, 10*time.Second), admin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "80 events exported once the topic exists", 60*time.Second, func() bool { return e.Exported() == 80 })
	if err := e.Admit(); err != nil {
		t.Errorf("Admit after the export caught up: %v", err)
	}
	checkExported(t, consume(t, c.ListenAddrs(), 80), w.Lines(), "px-1")
}

func TestExportStopsWithinItsGraceWhenBrokersAreAway(t *testing.T) {
	e, w := awayExporter(t)
	e.shutdownGrace = 300 * time.Millisecond
	stop := runExporter(t, e)
	w.write(10)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run and Close took %v to stop with the brokers away", d)
	}
	if e.Exported() != 0 || e.Backlog() != 10 {
		t.Errorf("exported %d, backlog %d with no broker", e.Exported(), e.Backlog())
	}
}

// TestExportWaitsForATrailThatStartsFailed: a trail whose directory
// cannot be used at start makes nothing durable until it attaches; the
// exporter starts anyway and checks its state once the trail has.
func TestExportWaitsForATrailThatStartsFailed(t *testing.T) {
	r := newExportRig(t, 10)
	c, cfg, w, state, log, logs := r.c, r.cfg, r.w, r.state, r.log, r.logs
	r.exportFirst(t, 50)

	t.Run("the same trail, once attached", func(t *testing.T) {
		var durable atomic.Uint64 // 0: not attached
		e, err := NewExporter(cfg, w.dir, state, "px-1", durable.Load, nil, log)
		if err != nil {
			t.Fatalf("NewExporter before the trail attached: %v", err)
		}
		stop := runExporter(t, e)
		w.write(20)
		durable.Store(w.Durable())
		waitFor(t, "70 events exported", 30*time.Second, func() bool { return e.Exported() == 70 })
		stop()
		if dups := checkExported(t, consume(t, c.ListenAddrs(), 70), w.Lines(), "px-1"); dups != 0 {
			t.Errorf("%d events sent twice", dups)
		}
	})
	t.Run("another trail, once attached, is not exported", func(t *testing.T) {
		other := newSpoolWriter(t, filepath.Join(t.TempDir(), "audit"), "px-1")
		var durable atomic.Uint64
		e, err := NewExporter(cfg, other.dir, state, "px-1", durable.Load, nil, log)
		if err != nil {
			t.Fatalf("NewExporter before the trail attached: %v", err)
		}
		runExporter(t, e)
		other.write(100)
		durable.Store(other.Durable())
		waitFor(t, "the export to fail", 30*time.Second, func() bool { return e.Stats().Failures > 0 })
		if pgerr.CodeOf(e.Admit()) != pgerr.IOError {
			t.Errorf("Admit with another trail's %d events not exported: %v", e.Backlog(), e.Admit())
		}
		if !strings.Contains(logs.String(), "not the one that was exported") {
			t.Errorf("the log does not say why:\n%s", logs.String())
		}
	})
}

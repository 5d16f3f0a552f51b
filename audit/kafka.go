package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
)

// Exporter ships a trail to Kafka (audit.kafka). The trail's files are
// the durable spool: the exporter follows them and sends each line's
// exact bytes as a record's value, keyed by the instance, to the topic,
// with franz-go's idempotent producer and acks=all. After each batch the
// brokers acknowledged, it writes the last exported seq (and that line's
// hash) to state_dir/audit-kafka.json (at most every 100 ms while
// records flow, and whenever it has caught up), and a restart resumes
// after it.
//
// Delivery is at least once: a batch acknowledged by the brokers but not
// yet recorded in the state file when the process stopped is sent again,
// so consumers de-duplicate on seq (per instance). Order per instance
// holds: one key is one partition, the idempotent producer keeps order
// across its retries, a failed record fails every record buffered after
// it (franz-go), and the exporter resends from the first record not
// acknowledged, so the first occurrence of each seq comes in seq order.
//
// Only lines whose seq is at most durable() are read: the writer may be
// in the middle of the next line. While the brokers are away franz-go
// retries without limit, the backlog (durable − exported) grows, and
// Admit refuses PHI once it passes audit.kafka.max_backlog.
type Exporter struct {
	cfg       *config.AuditKafka
	instance  string
	spoolDir  string
	statePath string
	durable   func() uint64
	notify    <-chan struct{}
	log       *slog.Logger
	client    *kgo.Client

	// Touched by Run only.
	spool     *spool
	pending   []pendingLine // read, not acknowledged yet; resent first
	failing   bool
	ackedHash string    // hash of the line at acked
	stateSeq  uint64    // seq the state file holds
	stateAt   time.Time // when it was last written

	acked    atomic.Uint64 // last seq the brokers acknowledged
	exported atomic.Uint64 // records acknowledged since NewExporter
	failures atomic.Uint64 // batches that failed and were retried
	stalled  atomic.Bool   // a batch waits for the brokers longer than stallAfter

	// Tunables (tests shorten them).
	pollInterval  time.Duration
	stallAfter    time.Duration
	shutdownGrace time.Duration
	maxBackoff    time.Duration

	closeOnce sync.Once
}

type pendingLine struct {
	seq   uint64
	value []byte
}

// Batch bounds: records and bytes read from the spool per produce.
const (
	exportBatchRecords = 1000
	exportBatchBytes   = 4 << 20
)

// stateEvery bounds how often the state file is written while records
// flow (each write is two fsyncs on what is often the trail's disk).
const stateEvery = 100 * time.Millisecond

// StateFileName is the exporter's state file in state_dir.
const StateFileName = "audit-kafka.json"

// NewExporter prepares the export of the trail in spoolDir (audit.file.dir)
// of instance, with its state in stateDir. durable returns the last seq
// the writer made durable (Trail.Durable) and notify is signalled after
// each durable batch (Trail.Notify; nil polls every second). Open the
// trail first: the state is checked against it (here when the trail has
// made events durable, else by Run once it has), and a trail that is not
// the one the state was written for is refused. It connects lazily; Run
// exports.
func NewExporter(cfg *config.AuditKafka, spoolDir, stateDir, instance string, durable func() uint64, notify <-chan struct{}, log *slog.Logger) (*Exporter, error) {
	return newExporter(cfg, spoolDir, stateDir, instance, durable, notify, log)
}

// newExporter is NewExporter with extra client options (tests shorten
// franz-go's timings).
func newExporter(cfg *config.AuditKafka, spoolDir, stateDir, instance string, durable func() uint64, notify <-chan struct{}, log *slog.Logger, extra ...kgo.Opt) (*Exporter, error) {
	if cfg == nil || len(cfg.Brokers) == 0 || cfg.Topic == "" {
		return nil, errors.New("audit export: audit.kafka needs brokers and a topic")
	}
	if instance == "" || durable == nil || spoolDir == "" || stateDir == "" {
		return nil, errors.New("BUG: audit.NewExporter without instance, durable, spool or state directory")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{
		cfg: cfg, instance: instance, durable: durable, notify: notify, log: log,
		statePath:    stateFilePath(stateDir),
		pollInterval: time.Second, stallAfter: 10 * time.Second,
		shutdownGrace: 5 * time.Second, maxBackoff: 10 * time.Second,
	}
	st, err := readExportState(e.statePath)
	if err != nil {
		return nil, err
	}
	if st.Topic != "" && st.Topic != cfg.Topic {
		log.Warn("audit export: the topic changed since the last run; the export continues after the last exported seq, on the new topic",
			"state", e.statePath, "was", st.Topic, "topic", cfg.Topic, "exported_seq", st.Seq)
	}
	opts, err := kafkaOptions(cfg, log)
	if err != nil {
		return nil, err
	}
	e.spoolDir = spoolDir
	e.acked.Store(st.Seq)
	e.ackedHash, e.stateSeq = st.Hash, st.Seq
	// A trail that could not attach its directory yet has made nothing
	// durable: the spool is opened once it has (by Run).
	if durable() > 0 {
		if err := e.openSpool(); err != nil {
			return nil, err
		}
	}
	cl, err := kgo.NewClient(append(opts, extra...)...)
	if err != nil {
		e.spool.close()
		return nil, fmt.Errorf("audit export: Kafka client: %v", err)
	}
	e.client = cl
	return e, nil
}

// openSpool positions the spool after the last exported event, checking
// that the trail is the one the state file was written for.
func (e *Exporter) openSpool() error {
	seq := e.acked.Load()
	if d := e.durable(); seq > d {
		return fmt.Errorf("audit export: %s says seq %d was exported, but the trail in %s ends at seq %d: it is not the trail that was exported; move %s away to export this trail from its start",
			e.statePath, seq, e.spoolDir, d, e.statePath)
	}
	sp, err := openSpool(e.spoolDir, seq, e.ackedHash, e.log)
	if err != nil {
		return fmt.Errorf("%w; move %s away to export this trail from its start", err, e.statePath)
	}
	e.spool = sp
	return nil
}

// Backlog is how many durable events are not exported yet.
func (e *Exporter) Backlog() int64 {
	d, a := e.durable(), e.acked.Load()
	if d <= a {
		return 0
	}
	return int64(d - a)
}

// Exported is the last seq the brokers acknowledged.
func (e *Exporter) Exported() uint64 { return e.acked.Load() }

// Admit is nil while PHI may be served as far as the export goes: the
// backlog is within audit.kafka.max_backlog. Past it, it returns a 58030
// (io_error) refusal; it clears by itself once the export catches up.
func (e *Exporter) Admit() error {
	b := e.Backlog()
	if b <= e.cfg.MaxBacklog {
		return nil
	}
	return pgerr.Newf(pgerr.IOError, "audit export to Kafka is behind: %d events not exported (audit.kafka.max_backlog %d); PHI is not served until it catches up", b, e.cfg.MaxBacklog).
		WithHint("Statements that touch no PHI still work. Check that the brokers of audit.kafka are reachable; the export resumes by itself.")
}

// ExportStats are the exporter's counters, for metrics.
type ExportStats struct {
	Exported uint64 // last seq the brokers acknowledged
	Backlog  int64  // durable events not exported yet
	Records  uint64 // records acknowledged since start
	Failures uint64 // batches that failed and were sent again
	// Stalled: a batch has waited for the brokers' acknowledgement
	// longer than 10 s (franz-go keeps retrying).
	Stalled bool
}

// Stats returns the exporter's counters.
func (e *Exporter) Stats() ExportStats {
	return ExportStats{
		Exported: e.acked.Load(), Backlog: e.Backlog(), Records: e.exported.Load(),
		Failures: e.failures.Load(), Stalled: e.stalled.Load(),
	}
}

// Run exports until ctx ends, then goes on for at most 5 s (the
// shutdown grace) to export what is durable by then, so that the stop
// and final checkpoint of a trail closed before ctx ended reach Kafka
// when the brokers are up. When the grace ends with a batch the brokers
// have not answered, Run returns without it (Close gives it up; the next
// start sends it again). Call Run once; call Close after it returned.
func (e *Exporter) Run(ctx context.Context) error {
	// The records' context: it ends a grace after ctx, so that a batch
	// in flight at ctx's end may still be acknowledged.
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rcancel()
	go func() {
		select {
		case <-ctx.Done():
			grace := time.NewTimer(e.shutdownGrace)
			defer grace.Stop()
			select {
			case <-grace.C:
				rcancel()
			case <-rctx.Done():
			}
		case <-rctx.Done(): // Run returned
		}
	}()
	tick := time.NewTicker(e.pollInterval)
	defer tick.Stop()
	backoff := 100 * time.Millisecond
	for {
		n, err := e.pump(rctx)
		if ctx.Err() != nil {
			if err == nil && n > 0 && rctx.Err() == nil {
				continue // draining
			}
			e.saveState()
			if b := e.Backlog(); b > 0 {
				e.log.Warn("audit export to Kafka stopped with events not exported; the next start sends them", "exported_seq", e.acked.Load(), "backlog", b)
			}
			return nil
		}
		if err != nil {
			e.saveState() // the part of the batch acknowledged before the failure
			e.failures.Add(1)
			if !e.failing {
				e.log.Error("audit export to Kafka failed; retrying", "topic", e.cfg.Topic, "exported_seq", e.acked.Load(), "backlog", e.Backlog(), "err", err)
				e.failing = true
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, e.maxBackoff)
			continue
		}
		backoff = 100 * time.Millisecond
		if n > 0 {
			if e.failing {
				e.log.Info("audit export to Kafka resumed", "topic", e.cfg.Topic, "exported_seq", e.acked.Load(), "backlog", e.Backlog())
				e.failing = false
			}
			continue
		}
		e.saveState()
		select {
		case <-ctx.Done():
		case <-e.notify:
		case <-tick.C:
		}
	}
}

// errAbandoned: the records' context ended before the brokers answered
// for every record of a batch.
var errAbandoned = errors.New("audit export: stopped before Kafka answered")

// pump sends one batch (the unacknowledged rest of the last one first)
// and waits for the brokers, or for ctx, the records' context, to end.
// It returns how many records they acknowledged.
func (e *Exporter) pump(ctx context.Context) (int, error) {
	if len(e.pending) == 0 {
		if err := e.fill(); err != nil {
			return 0, err
		}
	}
	if len(e.pending) == 0 {
		return 0, nil
	}
	// Produce rather than ProduceSync: an idempotent producer cannot
	// fail a record whose request is in flight, so it waits for brokers
	// that may be gone; Run must be able to stop regardless.
	errs := make([]error, len(e.pending))
	var wg sync.WaitGroup
	wg.Add(len(e.pending))
	for i, p := range e.pending {
		r := &kgo.Record{Key: []byte(e.instance), Value: p.value, Topic: e.cfg.Topic}
		e.client.Produce(ctx, r, func(_ *kgo.Record, err error) {
			errs[i] = err
			wg.Done()
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	stall := time.AfterFunc(e.stallAfter, func() {
		e.stalled.Store(true)
		e.log.Warn("audit export: Kafka has not acknowledged a batch yet (brokers unreachable, or refusing the TLS or SASL credentials?); retrying", "after", e.stallAfter, "topic", e.cfg.Topic, "exported_seq", e.acked.Load(), "backlog", e.Backlog())
	})
	defer stall.Stop()
	select {
	case <-done:
	case <-ctx.Done():
		// Records still in flight stay with the client (Close fails
		// them); nothing more is produced with it.
		select {
		case <-done:
		default:
			return 0, errAbandoned
		}
	}
	n := 0
	var err error
	for i, rerr := range errs {
		if rerr != nil {
			err = rerr
			break
		}
		n = i + 1
	}
	if n > 0 {
		last := e.pending[n-1]
		e.acked.Store(last.seq)
		e.ackedHash = lineHash(last.value)
		e.exported.Add(uint64(n))
		e.stalled.Store(false)
		e.pending = append([]pendingLine(nil), e.pending[n:]...)
		if time.Since(e.stateAt) >= stateEvery {
			e.saveState()
		}
	}
	return n, err
}

// saveState records the last acknowledged seq, if it changed. Losing an
// update (a crash before it) only means sending events again, so it is
// written at most every stateEvery while records flow, and whenever the
// export has caught up.
func (e *Exporter) saveState() {
	seq := e.acked.Load()
	if seq == e.stateSeq {
		return
	}
	e.stateAt = time.Now()
	if err := writeExportState(e.statePath, exportState{
		Topic: e.cfg.Topic, Instance: e.instance, Seq: seq, Hash: e.ackedHash, TS: FormatTime(e.stateAt),
	}); err != nil {
		// The brokers have the records: they count as exported. A
		// restart sends them again (at least once).
		e.log.Error("audit export: cannot record the exported seq", "state", e.statePath, "err", err)
		return
	}
	e.stateSeq = seq
}

// fill reads the next batch of durable lines from the spool.
func (e *Exporter) fill() error {
	limit := e.durable()
	if e.spool == nil {
		if limit == 0 {
			return nil
		}
		if err := e.openSpool(); err != nil {
			return err
		}
	}
	if err := e.spool.rewind(); err != nil {
		return err
	}
	size := 0
	for len(e.pending) < exportBatchRecords && size < exportBatchBytes {
		line, seq, err := e.spool.Next(limit)
		if err != nil {
			return err
		}
		if line == nil {
			return nil
		}
		e.pending = append(e.pending, pendingLine{seq: seq, value: append([]byte(nil), line...)})
		size += len(line)
	}
	return nil
}

// Close closes the Kafka client (records not acknowledged are given up;
// the next start sends them again) and the spool. Call it after Run
// returned.
func (e *Exporter) Close() error {
	e.closeOnce.Do(func() {
		e.client.Close()
		e.spool.close()
	})
	return nil
}

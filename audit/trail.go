package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/phiproxy/phiproxy/pgerr"
)

// ErrLocked: another process (a running phiproxy) writes the trail.
var ErrLocked = errors.New("in use by another phiproxy (one writer per audit directory)")

// Signer signs checkpoints (*crypto.Signer).
type Signer interface {
	Sign(data []byte) ([]byte, error)
	KeyID() uint32
}

// Modes of a Trail (config.AuditStrict, config.AuditBestEffort).
const (
	ModeStrict     = "strict"
	ModeBestEffort = "best_effort"
)

// Options configure a Trail.
type Options struct {
	Dir      string
	Instance string
	Mode     string // strict (default) or best_effort
	// CheckpointEvery, CheckpointInterval, MaxFileBytes: see
	// config.AuditFile (defaults 1000, 60s, 64 MiB).
	CheckpointEvery    int
	CheckpointInterval time.Duration
	MaxFileBytes       int64
	// Signer signs checkpoints; required.
	Signer Signer
	// HeadFile, if set, receives the last checkpoint's seq and hash at
	// each checkpoint (state_dir/audit-head.json).
	HeadFile string
	Logger   *slog.Logger
	// QueueSize bounds the events waiting for the writer (default 4096):
	// in strict mode a full queue slows PHI statements down, in
	// best_effort it loses events (counted).
	QueueSize int
	// RetryInterval is how often a failed sink is retried (default 1s).
	RetryInterval time.Duration
	// SyncInterval bounds how long an event nobody waits for (a write's,
	// a completion) may stay written but not fsynced (default 50ms): it
	// rides on the next group commit a waiting read makes, or on this.
	SyncInterval time.Duration
	// Fault, a test hook, runs before each file operation ("open",
	// "write", "sync"); an error it returns is that operation's.
	Fault func(op string) error
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Version is written in the start event's detail.
	Version string
}

// Stats are the writer's counters since Open.
type Stats struct {
	Events, Batches, Lost, Failures int64
	// SyncNanos is the total time spent in fsync; MaxSyncNanos the
	// longest one; MaxBatch the largest batch (records).
	SyncNanos, MaxSyncNanos, MaxBatch int64
	Queue                             int
}

// A Record is an event handed to the Trail.
type Record struct {
	ev     Event
	wait   bool
	done   chan struct{}
	err    error
	state  uint8 // under Trail.mu
	seq    uint64
	kind   uint8
	holder *Trail
}

const (
	stateQueued uint8 = iota
	stateWritten
	stateFailed
)

// Trail is the file sink: one writer goroutine that group-commits events
// (one write and one fsync per batch), chains them, checkpoints and
// rotates. Safe for concurrent use.
type Trail struct {
	opts Options
	log  *slog.Logger
	q    chan *Record
	mu   sync.Mutex // record states; failed
	stop chan struct{}
	done chan struct{}

	failed  atomic.Bool
	lastErr atomic.Pointer[error]
	durable atomic.Uint64
	notify  chan struct{}

	// writer goroutine only
	lock      *os.File
	f         *os.File
	fileName  string
	size      int64
	seq       uint64
	hash      string
	sinceCk   int
	lastCk    time.Time
	retained  []*Record
	start     *Record // this run's start event
	buf       []byte
	ckPending bool
	// unsynced are the records written since the last fsync; last is the
	// trail's state at that fsync, lastSync its time.
	unsynced []*Record
	last     synced
	lastSync time.Time
	// zeroed is how far the current file is zero-filled (zeroAhead);
	// zeros is the chunk it writes.
	zeroed int64
	zeros  []byte

	events, batches, lost, failures atomic.Int64
	syncNanos, maxSync, maxBatch    atomic.Int64
	lastLostLog                     atomic.Int64
	closeOnce                       sync.Once
	closeErr                        error
}

// Open opens (or creates) the trail in opts.Dir, continues its chain from
// the last durable event and writes a start event. The directory is locked
// for this Trail. A sink that cannot write yet is not an error: the Trail
// starts failed (Admit refuses PHI in strict mode) and retries.
func Open(opts Options) (*Trail, error) {
	if opts.Signer == nil {
		return nil, errors.New("audit: the trail needs the audit-signing keyset (phiproxy keys create makes it)")
	}
	if opts.Mode == "" {
		opts.Mode = ModeStrict
	}
	if opts.CheckpointEvery <= 0 {
		opts.CheckpointEvery = 1000
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = 60 * time.Second
	}
	if opts.MaxFileBytes <= 0 {
		opts.MaxFileBytes = 64 << 20
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 4096
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = time.Second
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = 50 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Trail{
		opts: opts, log: opts.Logger, q: make(chan *Record, opts.QueueSize),
		stop: make(chan struct{}), done: make(chan struct{}), notify: make(chan struct{}, 1),
		hash: ZeroHash, last: synced{hash: ZeroHash},
	}
	t.lastCk = opts.Now()
	t.start = &Record{ev: Event{Action: ActionStart, Detail: opts.Version}, kind: kindSystem}
	t.stamp(t.start)
	switch err := t.attach(); {
	case errors.Is(err, ErrLocked), errors.Is(err, errDamaged):
		return nil, err
	case err != nil:
		// The directory cannot be written yet (a full disk, permissions, a
		// path that is not a directory): start failed — PHI is refused in
		// strict mode — and attach on a retry.
		t.fail(err)
		t.retained = append(t.retained, t.start)
	default:
		t.writeBatch([]*Record{t.start}, true)
	}
	go t.run()
	return t, nil
}

const (
	kindStatement uint8 = iota
	kindSystem
)

// errDamaged: the trail's last event does not parse.
var errDamaged = errors.New("damaged trail")

// attach makes the directory (0700), takes its lock and finds where the
// chain ends (recover). The start event learns whether the previous run
// ended cleanly.
func (t *Trail) attach() error {
	if err := os.MkdirAll(t.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("audit: %v", err)
	}
	if err := os.Chmod(t.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("audit: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(t.opts.Dir, "audit.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %v", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return fmt.Errorf("audit: %s: %w", t.opts.Dir, ErrLocked)
	}
	clean, err := t.recover()
	if err != nil {
		lock.Close()
		return err
	}
	t.lock = lock
	t.start.ev.Clean = clean
	t.durable.Store(t.seq)
	t.last = synced{seq: t.seq, hash: t.hash, size: t.size, sinceCk: t.sinceCk, fileName: t.fileName}
	return nil
}

// stamp fills in what the trail knows of every event.
func (t *Trail) stamp(r *Record) {
	r.holder = t
	r.ev.V = Version
	r.ev.Instance = t.opts.Instance
	if r.ev.TS == "" {
		r.ev.TS = FormatTime(t.opts.Now())
	}
}

// Record hands ev to the writer. With wait, the returned Record's Wait
// reports when it is durable. In strict mode Record blocks while the queue
// is full (until ctx ends) and fails at once while the sink is failed; in
// best_effort mode it never blocks, and an event that finds the queue full
// is lost (counted).
func (t *Trail) Record(ctx context.Context, ev *Event, wait bool) (*Record, error) {
	r := &Record{ev: *ev, wait: wait}
	if wait {
		r.done = make(chan struct{})
	}
	t.stamp(r)
	if wait && t.failed.Load() && t.opts.Mode == ModeStrict {
		return nil, t.sinkError()
	}
	select {
	case <-t.stop:
		return nil, pgerr.New(pgerr.IOError, "audit trail closed: PHI is not served")
	default:
	}
	if t.opts.Mode == ModeBestEffort {
		select {
		case t.q <- r:
		default:
			t.loseEvents(1)
			if wait {
				return nil, t.sinkError()
			}
		}
		return r, nil
	}
	select {
	case t.q <- r:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.stop:
		return nil, pgerr.New(pgerr.IOError, "audit trail closed: PHI is not served")
	}
}

// Wait returns when r is durable (nil) or could not be written (a
// *pgerr.Error 58030), or ctx ends.
func (r *Record) Wait(ctx context.Context) error {
	if r.done == nil {
		return errors.New("audit: Wait on a record recorded without wait")
	}
	select {
	case <-r.done:
		return r.err
	case <-r.holder.done:
		select {
		case <-r.done:
			return r.err
		default:
			return pgerr.New(pgerr.IOError, "audit trail closed: PHI is not served")
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Seq is r's seq once written (0 before).
func (r *Record) Seq() uint64 {
	r.holder.mu.Lock()
	defer r.holder.mu.Unlock()
	return r.seq
}

// Complete records r's outcome: in r itself while it is not written yet,
// else in a completion record naming r's seq.
func (t *Trail) Complete(ctx context.Context, r *Record, rows int64, sqlstate, reason string) {
	t.mu.Lock()
	switch r.state {
	case stateQueued:
		r.ev.Rows, r.ev.Error = &rows, sqlstate
		switch {
		case reason == "":
		case r.ev.Reason == "":
			r.ev.Reason = reason
		default:
			r.ev.Reason += "; " + reason
		}
		t.mu.Unlock()
		return
	case stateFailed:
		t.mu.Unlock()
		return
	}
	seq := r.seq
	t.mu.Unlock()
	c := Event{
		Session: r.ev.Session, DBUser: r.ev.DBUser, Roles: r.ev.Roles, EndUser: r.ev.EndUser,
		Application: r.ev.Application, Client: r.ev.Client, Database: r.ev.Database, TLS: r.ev.TLS,
		Action: ActionCompletion, Relations: r.ev.Relations, Columns: r.ev.Columns, Decision: r.ev.Decision,
		Fingerprint: r.ev.Fingerprint, Rows: &rows, Error: sqlstate, Reason: reason, Role: r.ev.Role, Ref: seq,
	}
	_, _ = t.Record(ctx, &c, false)
}

// Admit is nil when PHI may be served: in strict mode, while the sink
// writes; in best_effort mode, always.
func (t *Trail) Admit() error {
	if t.opts.Mode == ModeStrict && t.failed.Load() {
		return t.sinkError()
	}
	return nil
}

// Mode is the trail's mode.
func (t *Trail) Mode() string { return t.opts.Mode }

// Durable is the seq of the last event known to be on disk.
func (t *Trail) Durable() uint64 { return t.durable.Load() }

// Notify is signalled (coalescing) after each durable batch.
func (t *Trail) Notify() <-chan struct{} { return t.notify }

// Dir is the trail's directory.
func (t *Trail) Dir() string { return t.opts.Dir }

// Stats returns the writer's counters.
func (t *Trail) Stats() Stats {
	return Stats{
		Events: t.events.Load(), Batches: t.batches.Load(), Lost: t.lost.Load(), Failures: t.failures.Load(),
		SyncNanos: t.syncNanos.Load(), MaxSyncNanos: t.maxSync.Load(), MaxBatch: t.maxBatch.Load(), Queue: len(t.q),
	}
}

// Err is the sink's last error while it is failed, nil while it writes.
func (t *Trail) Err() error {
	if !t.failed.Load() {
		return nil
	}
	if p := t.lastErr.Load(); p != nil {
		return *p
	}
	return errors.New("audit sink failed")
}

func (t *Trail) sinkError() *pgerr.Error {
	return pgerr.New(pgerr.IOError, "the audit trail cannot be written: PHI is not served until it can").
		WithHint("Check the audit directory (disk space, permissions, I/O errors); phiproxy retries by itself. Statements that do not touch PHI are not affected.")
}

func (t *Trail) loseEvents(n int) {
	t.lost.Add(int64(n))
	now := time.Now().UnixNano()
	if last := t.lastLostLog.Load(); now-last > int64(10*time.Second) && t.lastLostLog.CompareAndSwap(last, now) {
		t.log.Error("audit events lost (best_effort mode)", "lost_total", t.lost.Load(), "dir", t.opts.Dir)
	}
}

// Close drains the queue, writes a stop event and a final checkpoint,
// and releases the directory. Records after Close fail.
func (t *Trail) Close() error {
	t.closeOnce.Do(func() {
		close(t.stop)
		<-t.done
	})
	return t.closeErr
}

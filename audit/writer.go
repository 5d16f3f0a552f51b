package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
)

// run is the writer goroutine.
func (t *Trail) run() {
	defer close(t.done)
	tick := time.NewTicker(min(t.opts.CheckpointInterval, t.opts.RetryInterval, t.opts.SyncInterval))
	defer tick.Stop()
	batch := make([]*Record, 0, 256)
	for {
		select {
		case r := <-t.q:
			batch = append(batch[:0], r)
			batch = t.drain(batch, 4096)
			t.writeBatch(batch, false)
		case <-tick.C:
			switch {
			case t.failed.Load():
				t.writeBatch(nil, true) // retry the retained records
			case t.sinceCk > 0 && t.opts.Now().Sub(t.lastCk) >= t.opts.CheckpointInterval:
				t.ckPending = true
				t.writeBatch(nil, true)
			case len(t.unsynced) > 0 && time.Since(t.lastSync) >= t.opts.SyncInterval:
				t.writeBatch(nil, true)
			}
		case <-t.stop:
			t.shutdown(batch)
			return
		}
	}
}

// drain appends what is queued, up to limit records.
func (t *Trail) drain(batch []*Record, limit int) []*Record {
	for len(batch) < limit {
		select {
		case r := <-t.q:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// shutdown writes what is queued, a stop event and the final checkpoint.
func (t *Trail) shutdown(batch []*Record) {
	for {
		batch = t.drain(batch[:0], 4096)
		if len(batch) == 0 {
			break
		}
		t.writeBatch(batch, false)
	}
	stop := &Record{ev: Event{Action: ActionStop}, kind: kindSystem}
	t.stamp(stop)
	t.ckPending = true
	t.writeBatch([]*Record{stop}, true)
	if t.failed.Load() {
		t.closeErr = fmt.Errorf("audit: closing the trail: %v (%d events not written)", t.Err(), len(t.retained))
	}
	if t.f != nil {
		_ = t.f.Truncate(t.size) // cut the zeroed space after the last line
		t.f.Close()
		t.f = nil
	}
	if t.lock != nil {
		t.lock.Close()
	}
}

// synced is the state of the trail at its last fsync: what a failure
// rolls back to.
type synced struct {
	seq      uint64
	hash     string
	size     int64
	sinceCk  int
	fileName string
}

// writeBatch appends the retained records (after a failure) and batch,
// with a checkpoint where one is due, in one write. It fsyncs — making
// every line written since the last fsync durable — when a record of
// the batch is waited for (a statement's first row), a checkpoint is in
// it, force is set, or SyncInterval has passed; then it releases the
// waiters. Records nobody waits for (writes, completions) otherwise ride
// on the next fsync, at most SyncInterval later. On failure the file is
// cut back to its last fsync, the waiters get the sink error, and the
// records since that fsync that nobody waits for are kept for the retry
// (up to the queue size; beyond it they are lost).
func (t *Trail) writeBatch(batch []*Record, force bool) {
	recs := batch
	if len(t.retained) > 0 {
		recs = append(t.retained, batch...)
		t.retained = nil
	}
	if len(recs) == 0 && !t.ckPending && !t.failed.Load() && !(force && len(t.unsynced) > 0) {
		return
	}
	if t.lock == nil {
		// Not attached yet (Open could not use the directory): try again.
		if err := t.attach(); err != nil {
			t.unsynced = append(t.unsynced, recs...)
			t.fail(err)
			return
		}
	}
	buf := t.buf[:0]
	var err error
	checkpointed, wait := false, false
	t.mu.Lock()
	for _, r := range recs {
		r.ev.Seq, r.ev.Prev = t.seq+1, t.hash
		if buf, err = r.ev.AppendLine(buf); err != nil {
			break
		}
		buf = append(buf, '\n')
		t.seq, t.hash = r.ev.Seq, r.ev.Hash
		r.seq, r.state = r.ev.Seq, stateWritten
		wait = wait || r.done != nil
		t.sinceCk++
		if t.sinceCk >= t.opts.CheckpointEvery {
			if buf, err = t.appendCheckpoint(buf); err != nil {
				break
			}
			checkpointed = true
		}
	}
	t.mu.Unlock()
	if err == nil && t.ckPending && t.sinceCk > 0 {
		buf, err = t.appendCheckpoint(buf)
		checkpointed = checkpointed || err == nil
	}
	sync := force || wait || checkpointed || t.failed.Load() || time.Since(t.lastSync) >= t.opts.SyncInterval ||
		t.size+int64(len(buf)) >= t.opts.MaxFileBytes
	if err == nil {
		err = t.write(buf)
	}
	if err == nil && sync {
		err = t.sync()
	}
	t.buf = buf[:0]
	t.unsynced = append(t.unsynced, recs...)
	if err != nil {
		t.fail(err)
		return
	}
	t.events.Add(int64(len(recs)))
	if n := int64(len(recs)); n > t.maxBatch.Load() {
		t.maxBatch.Store(n)
	}
	if !sync {
		return
	}
	t.ckPending = false
	if t.failed.Swap(false) {
		t.log.Info("audit trail writes again", "dir", t.opts.Dir)
	}
	t.batches.Add(1)
	t.durable.Store(t.seq)
	t.last = synced{seq: t.seq, hash: t.hash, size: t.size, sinceCk: t.sinceCk, fileName: t.fileName}
	for _, r := range t.unsynced {
		if r.done != nil {
			close(r.done)
		}
	}
	clear(t.unsynced)
	t.unsynced = t.unsynced[:0]
	select {
	case t.notify <- struct{}{}:
	default:
	}
	if checkpointed && t.opts.HeadFile != "" {
		if err := t.writeHead(); err != nil {
			t.log.Error("audit head file not written", "file", t.opts.HeadFile, "err", err)
		}
	}
	if t.size >= t.opts.MaxFileBytes {
		_ = t.f.Truncate(t.size) // cut the zeroed space after the last line
		t.f.Close()
		t.f, t.fileName, t.size = nil, "", 0 // the next line starts a new file
		t.last.fileName, t.last.size = "", 0
	}
}

// appendCheckpoint appends a signed checkpoint event.
func (t *Trail) appendCheckpoint(buf []byte) ([]byte, error) {
	ev := Event{V: Version, Seq: t.seq + 1, TS: FormatTime(t.opts.Now()), Instance: t.opts.Instance, Action: ActionCheckpoint, Prev: t.hash}
	if err := ev.Sign(t.opts.Signer); err != nil {
		return buf, err
	}
	buf, err := ev.AppendLine(buf)
	if err != nil {
		return buf, err
	}
	t.seq, t.hash, t.sinceCk = ev.Seq, ev.Hash, 0
	t.lastCk = t.opts.Now()
	return append(buf, '\n'), nil
}

// fail rolls the trail back to its last fsync after a failed write or
// fsync: the file is cut back, the records written since then are
// unwritten, their waiters get the sink error, and the others are kept
// for the retry.
func (t *Trail) fail(err error) {
	t.failures.Add(1)
	t.lastErr.Store(&err)
	if !t.failed.Swap(true) {
		t.log.Error("audit trail cannot be written; PHI statements are refused (strict) until it can", "dir", t.opts.Dir, "mode", t.opts.Mode, "err", err)
	}
	if t.f != nil && t.fileName != t.last.fileName {
		// A file opened since the last fsync: it goes, unsynced lines and all.
		name := t.fileName
		t.f.Close()
		t.f = nil
		os.Remove(filepath.Join(t.opts.Dir, name))
	}
	t.seq, t.hash, t.size, t.sinceCk, t.fileName = t.last.seq, t.last.hash, t.last.size, t.last.sinceCk, t.last.fileName
	if t.f != nil {
		t.cutBack()
	}
	perr := t.sinkError()
	t.mu.Lock()
	for _, r := range t.unsynced {
		r.ev.Seq, r.ev.Prev, r.ev.Hash = 0, "", ""
		if r.done != nil {
			r.state, r.err = stateFailed, perr
			close(r.done)
			continue
		}
		r.state, r.seq = stateQueued, 0
		if len(t.retained) < t.opts.QueueSize {
			t.retained = append(t.retained, r)
		} else {
			t.loseEvents(1)
		}
	}
	t.mu.Unlock()
	clear(t.unsynced)
	t.unsynced = t.unsynced[:0]
}

// write appends buf to the current file, opening a new one where needed.
func (t *Trail) write(buf []byte) error {
	if t.f == nil {
		if err := t.openFile(t.seq - countLines(buf) + 1); err != nil {
			return err
		}
	}
	if len(buf) == 0 {
		return nil
	}
	if err := t.fault("write"); err != nil {
		return err
	}
	if err := t.zeroAhead(t.size + int64(len(buf))); err != nil {
		return err
	}
	n, err := t.f.WriteAt(buf, t.size)
	t.size += int64(n)
	return err
}

// zeroChunk is how far ahead of the last line a file is zero-filled.
const zeroChunk = 1 << 20

// zeroAhead makes sure the file holds written zeros up to past end:
// appends then overwrite blocks that exist, so their fdatasync flushes
// data alone — no block allocation, no size change, no journal commit —
// about half the kernel work of an fsync after an append (measured on
// these VMs). The zeros are made durable once per chunk. Readers stop at
// a NUL where a line should start; Close and rotation cut the file back to
// its lines, and so does the next start after a crash.
func (t *Trail) zeroAhead(end int64) error {
	for end > t.zeroed {
		if t.zeros == nil {
			t.zeros = make([]byte, zeroChunk)
		}
		if _, err := t.f.WriteAt(t.zeros, t.zeroed); err != nil {
			return err
		}
		if err := t.f.Sync(); err != nil {
			return err
		}
		t.zeroed += zeroChunk
	}
	return nil
}

// sync fsyncs the current file.
func (t *Trail) sync() error {
	if err := t.fault("sync"); err != nil {
		return err
	}
	start := time.Now()
	// fdatasync: the data and what is needed to read it back (the size),
	// not the times.
	if err := syscall.Fdatasync(int(t.f.Fd())); err != nil {
		return err
	}
	t.lastSync = time.Now()
	d := t.lastSync.Sub(start).Nanoseconds()
	t.syncNanos.Add(d)
	if d > t.maxSync.Load() {
		t.maxSync.Store(d)
	}
	return nil
}

// cutBack truncates the file to its last durable size after a failure;
// if that fails too, the file is closed and the next write reopens (and
// cuts) it.
func (t *Trail) cutBack() {
	t.zeroed = t.size
	if terr := t.f.Truncate(t.size); terr != nil {
		t.f.Close()
		t.f = nil
	} else if _, serr := t.f.Seek(t.size, io.SeekStart); serr != nil {
		t.f.Close()
		t.f = nil
	}
}

func countLines(buf []byte) uint64 {
	var n uint64
	for _, c := range buf {
		if c == '\n' {
			n++
		}
	}
	return n
}

func (t *Trail) fault(op string) error {
	if t.opts.Fault != nil {
		return t.opts.Fault(op)
	}
	return nil
}

// openFile opens the file the next line (seq first) goes to: the current
// one again after a failure, else a new one.
func (t *Trail) openFile(first uint64) error {
	if err := t.fault("open"); err != nil {
		return err
	}
	if err := os.MkdirAll(t.opts.Dir, 0o700); err != nil {
		return err
	}
	name := t.fileName
	if name == "" {
		name = FileName(first)
	}
	f, err := os.OpenFile(filepath.Join(t.opts.Dir, name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	// After a failure: cut what a failed write may have left.
	if err := f.Truncate(t.size); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Seek(t.size, io.SeekStart); err != nil {
		f.Close()
		return err
	}
	if t.fileName == "" {
		if err := atomicfile.SyncDir(t.opts.Dir); err != nil {
			f.Close()
			return err
		}
	}
	t.f, t.fileName, t.zeroed = f, name, t.size
	return nil
}

// Head is the content of the head file: the last checkpoint written.
type Head struct {
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`
	Hash     string `json:"hash"`
	File     string `json:"file"`
	TS       string `json:"ts"`
}

// ReadHead reads a head file.
func ReadHead(path string) (*Head, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &h, nil
}

func (t *Trail) writeHead() error {
	b, _ := json.Marshal(Head{Instance: t.opts.Instance, Seq: t.seq, Hash: t.hash, File: t.fileName, TS: FormatTime(t.opts.Now())})
	if err := os.MkdirAll(filepath.Dir(t.opts.HeadFile), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(t.opts.HeadFile, append(b, '\n'), 0o600)
}

// recover finds where the trail ends: the last complete line of the last
// non-empty file (a partial line after it, a write cut short by a crash,
// is truncated away: nobody was told it was durable). It returns whether
// the previous run stopped cleanly (nil for a new trail).
func (t *Trail) recover() (*bool, error) {
	segs, err := Segments(t.opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %v", err)
	}
	for len(segs) > 0 {
		last := segs[len(segs)-1]
		end, lastLine, prevAction, err := scanTail(last.Path)
		if err != nil {
			return nil, fmt.Errorf("audit: %s: %v", last.Path, err)
		}
		if lastLine == nil {
			// A file created at rotation whose first write never landed.
			if err := os.Remove(last.Path); err != nil {
				return nil, fmt.Errorf("audit: %v", err)
			}
			segs = segs[:len(segs)-1]
			continue
		}
		ev, err := Parse(lastLine)
		if err != nil {
			return nil, fmt.Errorf("audit: the trail's last event (%s) is damaged: %v; run phiproxy audit verify, move the damaged trail aside and restart: %w", last.Path, err, errDamaged)
		}
		if err := os.Truncate(last.Path, end); err != nil {
			return nil, fmt.Errorf("audit: %v", err)
		}
		t.seq, t.hash, t.size = ev.Seq, ev.Hash, end
		t.fileName = filepath.Base(last.Path)
		if end >= t.opts.MaxFileBytes {
			t.fileName, t.size = "", 0
		}
		clean := ev.Action == ActionCheckpoint && prevAction == ActionStop
		return &clean, nil
	}
	return nil, nil
}

// scanTail returns the offset after the last complete line of a file, that
// line, and the action of the line before it.
func scanTail(path string) (end int64, last []byte, prevAction string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, "", err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	var off int64
	var prev []byte
	for {
		if atZeros(r) {
			break // zeroed ahead by a run that did not stop cleanly
		}
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			break // a partial line (no newline) is dropped
		}
		if err != nil {
			return 0, nil, "", err
		}
		off += int64(len(line))
		prev, last = last, line
		end = off
	}
	if prev != nil {
		var a struct {
			Action string `json:"action"`
		}
		if canon, _, err := Canonical(prev); err == nil && json.Unmarshal(canon, &a) == nil {
			prevAction = a.Action
		}
	}
	if len(last) > MaxLineBytes {
		return 0, nil, "", errors.New("line longer than 1 MiB")
	}
	return end, last, prevAction, nil
}

package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgerr"
)

func openTrail(t testing.TB, dir string, sig *trailSigner, mod func(*Options)) *Trail {
	t.Helper()
	o := Options{Dir: dir, Instance: "px-test", Signer: sig, HeadFile: filepath.Join(dir, "..", "state", "audit-head.json"), RetryInterval: 20 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	tr, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// newTrail opens a Trail in a new directory with a new signer.
func newTrail(t testing.TB, mod func(*Options)) (*Trail, string, *trailSigner) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "audit")
	sig := newTrailSigner(t)
	return openTrail(t, dir, sig, mod), dir, sig
}

// readChain reads every event of the trail in dir and checks the chain
// (seq, prev, hash, checkpoint signatures) as a verifier would.
func readChain(t testing.TB, dir string, sig *trailSigner) []*Event {
	t.Helper()
	var out []*Event
	prev, seq := ZeroHash, uint64(0)
	for _, l := range trailRecords(t, dir) {
		if l.Partial {
			t.Fatalf("%s:%d: partial line", l.File, l.No)
		}
		ev, err := Parse(l.Bytes)
		if err != nil {
			t.Fatalf("%s:%d: %v", l.File, l.No, err)
		}
		if ev.Seq != seq+1 || ev.Prev != prev {
			t.Fatalf("%s:%d: seq %d prev %.8s, want seq %d prev %.8s", l.File, l.No, ev.Seq, ev.Prev, seq+1, prev)
		}
		if ev.Action == ActionCheckpoint {
			s, _ := base64.StdEncoding.DecodeString(ev.Signature)
			if err := sig.verifier.Verify(s, CheckpointMessage(ev.Instance, ev.Seq, ev.Prev)); err != nil {
				t.Fatalf("checkpoint %d: %v", ev.Seq, err)
			}
		}
		prev, seq = ev.Hash, ev.Seq
		out = append(out, ev)
	}
	return out
}

// waitRecord records ev as a read's event (the statement waits for it)
// and waits until it is durable.
func waitRecord(ctx context.Context, tr *Trail, ev *Event) (*Record, error) {
	r, err := tr.Record(ctx, ev, true)
	if err == nil {
		err = r.Wait(ctx)
	}
	return r, err
}

// mustRecord is waitRecord, failing t on an error.
func mustRecord(t testing.TB, ctx context.Context, tr *Trail, ev *Event) *Record {
	t.Helper()
	r, err := waitRecord(ctx, tr, ev)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func actions(evs []*Event) string {
	var b []string
	for _, e := range evs {
		b = append(b, e.Action)
	}
	return strings.Join(b, " ")
}

func TestTrailChainCheckpointsRestart(t *testing.T) {
	tr, dir, sig := newTrail(t, func(o *Options) { o.CheckpointEvery = 3 })
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		r := mustRecord(t, ctx, tr, &Event{Action: ActionRead, Session: "s1", Query: "SELECT ssn FROM patients WHERE id = $1"})
		tr.Complete(ctx, r, 1, "", "")
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	evs := readChain(t, dir, sig)
	got := actions(evs)
	// start, then 4 × (read, completion), checkpoints every 3 events, stop + final checkpoint.
	want := "start read completion checkpoint read completion read checkpoint completion read completion checkpoint stop checkpoint"
	if got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	if evs[0].Clean != nil {
		t.Fatalf("a new trail's start has clean %v", *evs[0].Clean)
	}
	if evs[1].Rows != nil || evs[2].Ref != evs[1].Seq || evs[2].Rows == nil || *evs[2].Rows != 1 {
		t.Fatalf("read %+v completion %+v", evs[1], evs[2])
	}
	head, err := ReadHead(filepath.Join(dir, "..", "state", "audit-head.json"))
	if err != nil {
		t.Fatal(err)
	}
	if last := evs[len(evs)-1]; head.Seq != last.Seq || head.Hash != last.Hash {
		t.Fatalf("head %+v, last %d %s", head, last.Seq, last.Hash)
	}
	for _, p := range []string{dir, filepath.Join(dir, FileName(1)), filepath.Join(dir, "..", "state", "audit-head.json")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: mode %v", p, fi.Mode())
		}
	}

	// A clean restart continues the chain and says so.
	tr = openTrail(t, dir, sig, nil)
	tr.Close()
	evs = readChain(t, dir, sig)
	var starts []*Event
	for _, e := range evs {
		if e.Action == ActionStart {
			starts = append(starts, e)
		}
	}
	if len(starts) != 2 || starts[1].Clean == nil || !*starts[1].Clean {
		t.Fatalf("second start: %+v", starts[1])
	}

	// A crash (no stop) and a partial last line: the next start cuts the
	// partial line and says the previous run did not end cleanly.
	tr = openTrail(t, dir, sig, nil)
	r, _ := tr.Record(ctx, &Event{Action: ActionWrite}, true)
	if err := r.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// Simulate the crash: take the writer away without a stop event.
	close(tr.stop)
	<-tr.done
	segs, _ := Segments(dir)
	f, _ := os.OpenFile(segs[len(segs)-1].Path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"v":1,"seq":99,"ts":"2026-`)
	f.Close()
	// (the crashed writer wrote a stop on close above; strip the tail so
	// that the trail ends where a crash would have left it)
	truncateAfter(t, segs[len(segs)-1].Path, ActionWrite)
	f, _ = os.OpenFile(segs[len(segs)-1].Path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"v":1,"seq":99,"ts":"2026-`)
	f.Close()
	tr = openTrail(t, dir, sig, nil)
	tr.Close()
	evs = readChain(t, dir, sig)
	starts = starts[:0]
	for _, e := range evs {
		if e.Action == ActionStart {
			starts = append(starts, e)
		}
	}
	if len(starts) != 4 || starts[3].Clean == nil || *starts[3].Clean {
		t.Fatalf("start after a crash: %+v", starts[len(starts)-1])
	}
}

// truncateAfter cuts the file after the last line with action a.
func truncateAfter(t testing.TB, path, a string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	keep := 0
	for i, l := range lines {
		if bytes.Contains(l, []byte(`"action":"`+a+`"`)) {
			keep = i + 1
		}
	}
	if err := os.WriteFile(path, bytes.Join(lines[:keep], nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTrailRotation(t *testing.T) {
	tr, dir, sig := newTrail(t, func(o *Options) { o.MaxFileBytes = 4096 })
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		mustRecord(t, ctx, tr, &Event{Action: ActionWrite, Query: "INSERT INTO patients (ssn) VALUES ($1)"})
	}
	tr.Close()
	segs, _ := Segments(dir)
	if len(segs) < 3 {
		t.Fatalf("%d files, want rotation", len(segs))
	}
	evs := readChain(t, dir, sig)
	// Each file is named by its first seq.
	seen := 0
	for _, s := range segs {
		b, _ := os.ReadFile(s.Path)
		first, _ := Parse(bytes.SplitN(b, []byte("\n"), 2)[0])
		if first.Seq != s.First {
			t.Fatalf("%s starts at seq %d", s.Path, first.Seq)
		}
		seen += bytes.Count(b, []byte("\n"))
	}
	if seen != len(evs) {
		t.Fatalf("%d lines, %d events", seen, len(evs))
	}
}

// A sink that fails on command: waiters get 58030, Admit refuses, records
// nobody waits for are kept and written after recovery, the chain has no
// gap, and the trail recovers without a restart.
func TestTrailFailureAndRecovery(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	sig := newTrailSigner(t)
	var failing atomic.Bool
	tr := openTrail(t, dir, sig, func(o *Options) {
		o.Fault = func(op string) error {
			if failing.Load() {
				return fmt.Errorf("%s: no space left on device", op)
			}
			return nil
		}
	})
	defer tr.Close()
	ctx := context.Background()
	if err := tr.Admit(); err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	_, err := waitRecord(ctx, tr, &Event{Action: ActionRead})
	var pe *pgerr.Error
	if !errors.As(err, &pe) || pe.Code != pgerr.IOError {
		t.Fatalf("wait on a failing sink: %v", err)
	}
	if err := tr.Admit(); err == nil {
		t.Fatal("Admit is nil while the sink fails")
	}
	// Fails fast while failed.
	if _, err := tr.Record(ctx, &Event{Action: ActionRead}, true); err == nil {
		t.Fatal("Record with wait succeeded while the sink fails")
	}
	// A write's event, nobody waits: kept.
	if _, err := tr.Record(ctx, &Event{Action: ActionWrite, Error: "58030"}, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	failing.Store(false)
	if !testenv.Eventually(5*time.Second, 10*time.Millisecond, func() bool { return tr.Admit() == nil }) {
		t.Fatal("no recovery")
	}
	if _, err := waitRecord(ctx, tr, &Event{Action: ActionRead}); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	tr.Close()
	evs := readChain(t, dir, sig)
	if got := actions(evs); got != "start write read stop checkpoint" {
		t.Fatalf("events after recovery: %s", got)
	}
	if tr.Stats().Failures == 0 {
		t.Fatal("no failure counted")
	}
}

// Best effort: a failing sink loses events (counted) and never refuses.
func TestTrailBestEffort(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	var failing atomic.Bool
	failing.Store(true)
	tr := openTrail(t, dir, newTrailSigner(t), func(o *Options) {
		o.Mode, o.QueueSize = ModeBestEffort, 4
		o.Fault = func(string) error {
			if failing.Load() {
				return errors.New("i/o error")
			}
			return nil
		}
	})
	defer tr.Close()
	for i := 0; i < 50; i++ {
		if _, err := tr.Record(context.Background(), &Event{Action: ActionWrite}, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Admit(); err != nil {
		t.Fatalf("best_effort refused: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if tr.Stats().Lost == 0 {
		t.Fatal("no event counted lost")
	}
	failing.Store(false)
}

// 16 writers × 1000 events: every event once, in one unbroken chain.
func TestTrailConcurrent(t *testing.T) {
	tr, dir, sig := newTrail(t, func(o *Options) { o.MaxFileBytes = 1 << 20 })
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; i < 1000; i++ {
				r, err := tr.Record(ctx, &Event{Action: ActionRead, Session: fmt.Sprint("s", w), Fingerprint: fmt.Sprint(i)}, i%2 == 0)
				if err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					if err := r.Wait(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	tr.Close()
	evs := readChain(t, dir, sig)
	seen := map[string]bool{}
	for _, e := range evs {
		if e.Action == ActionRead {
			k := e.Session + "/" + e.Fingerprint
			if seen[k] {
				t.Fatalf("duplicate %s", k)
			}
			seen[k] = true
		}
	}
	if len(seen) != 16000 {
		t.Fatalf("%d read events, want 16000", len(seen))
	}
	st := tr.Stats()
	if st.Batches >= st.Events {
		t.Logf("no group commit: %d batches for %d events", st.Batches, st.Events)
	}
}

func TestTrailDirectoryLocked(t *testing.T) {
	tr, dir, sig := newTrail(t, nil)
	defer tr.Close()
	if _, err := Open(Options{Dir: dir, Instance: "other", Signer: sig}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second writer on one directory: %v", err)
	}
}

// Events nobody waits for ride on the next group commit, at most
// SyncInterval later; a fsync that fails rolls back to the last good one
// and the unsynced events are written again after recovery.
func TestTrailLazySync(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	sig := newTrailSigner(t)
	var failing atomic.Bool
	var syncs atomic.Int64
	tr := openTrail(t, dir, sig, func(o *Options) {
		o.SyncInterval = 200 * time.Millisecond
		o.Fault = func(op string) error {
			if op == "sync" {
				syncs.Add(1)
				if failing.Load() {
					return errors.New("EIO")
				}
			}
			return nil
		}
	})
	ctx := context.Background()
	base := tr.Durable()
	before := syncs.Load()
	for i := 0; i < 50; i++ {
		if _, err := tr.Record(ctx, &Event{Action: ActionWrite}, false); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	if n := syncs.Load() - before; n > 1 {
		t.Fatalf("%d fsyncs for 50 events nobody waits for", n)
	}
	if !testenv.Eventually(2*time.Second, 10*time.Millisecond, func() bool { return tr.Durable() >= base+50 }) {
		t.Fatalf("durable %d, want %d within SyncInterval", tr.Durable(), base+50)
	}
	// Written but not synced when the fsync fails: rolled back, kept, and
	// written again.
	for i := 0; i < 5; i++ {
		tr.Record(ctx, &Event{Action: ActionDelete}, false)
	}
	time.Sleep(20 * time.Millisecond)
	failing.Store(true)
	_, err := waitRecord(ctx, tr, &Event{Action: ActionRead})
	if err == nil {
		t.Fatal("a read's event was acknowledged while fsync fails")
	}
	failing.Store(false)
	for tr.Admit() != nil {
		time.Sleep(10 * time.Millisecond)
	}
	tr.Close()
	evs := readChain(t, dir, sig)
	if got := strings.Count(actions(evs), "delete"); got != 5 {
		t.Fatalf("%d delete events after recovery, want 5: %s", got, actions(evs))
	}
}

// A directory that cannot be used at start (here: its parent is a
// file) is not fatal: the trail starts failed, refuses PHI (Admit), and
// attaches by itself once the directory can be made.
func TestTrailStartsFailedAndAttachesLater(t *testing.T) {
	base := t.TempDir()
	blocker := filepath.Join(base, "blocker")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(blocker, "audit")
	sig := newTrailSigner(t)
	tr := openTrail(t, dir, sig, nil)
	defer tr.Close()
	if tr.Admit() == nil {
		t.Fatal("Admit is nil while the directory cannot be made")
	}
	if _, err := tr.Record(context.Background(), &Event{Action: ActionWrite}, false); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if !testenv.Eventually(5*time.Second, 10*time.Millisecond, func() bool { return tr.Admit() == nil }) {
		t.Fatalf("no recovery: %v", tr.Err())
	}
	tr.Close()
	if got := actions(readChain(t, dir, sig)); got != "start write stop checkpoint" {
		t.Fatalf("events: %s", got)
	}
}

// A file is zero-filled ahead of its last line while the trail runs:
// readers stop at the zeros, a clean stop cuts them, and after a crash
// (the directory as a running trail left it) the next start cuts them
// and continues the chain.
func TestTrailZeroFilledTail(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "audit")
	sig := newTrailSigner(t)
	tr := openTrail(t, dir, sig, nil)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		r, err := tr.Record(ctx, &Event{Action: ActionRead}, true)
		if err != nil || r.Wait(ctx) != nil {
			t.Fatal(err)
		}
	}
	segs, _ := Segments(dir)
	fi, err := os.Stat(segs[0].Path)
	if err != nil || fi.Size() < zeroChunk {
		t.Fatalf("the running trail's file is not zero-filled ahead: %v %v", fi.Size(), err)
	}
	// Readers see the lines, not the zeros.
	if n := len(readChain(t, dir, sig)); n != 21 {
		t.Fatalf("%d events read from the running trail, want 21", n)
	}
	// A crash: copy the files as they are now and start on the copy.
	crashed := filepath.Join(base, "crashed")
	os.MkdirAll(crashed, 0o700)
	b, _ := os.ReadFile(segs[0].Path)
	os.WriteFile(filepath.Join(crashed, filepath.Base(segs[0].Path)), b, 0o600)
	tr.Close()
	if fi, _ := os.Stat(segs[0].Path); fi.Size() >= zeroChunk {
		t.Fatalf("a clean stop left the zeros: %d bytes", fi.Size())
	}
	tr2 := openTrail(t, crashed, sig, nil)
	tr2.Close()
	evs := readChain(t, crashed, sig)
	last := evs[len(evs)-3] // start, stop, checkpoint of the second run
	if last.Action != ActionStart || last.Clean == nil || *last.Clean {
		t.Fatalf("after a crash with a zero-filled tail: %s", actions(evs))
	}
	if fi, _ := os.Stat(filepath.Join(crashed, filepath.Base(segs[0].Path))); fi.Size() >= zeroChunk {
		t.Fatalf("the start after a crash left the zeros: %d bytes", fi.Size())
	}
}

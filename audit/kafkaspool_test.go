package audit

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// next reads the spool up to limit (one sweep, as the exporter's fill)
// and returns the seqs it gave.
func next(t *testing.T, s *spool, limit uint64) []uint64 {
	t.Helper()
	got, _ := nextLines(t, s, limit)
	return got
}

func nextLines(t *testing.T, s *spool, limit uint64) ([]uint64, [][]byte) {
	t.Helper()
	if err := s.rewind(); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	var lines [][]byte
	for {
		line, seq, err := s.Next(limit)
		if err != nil {
			t.Fatal(err)
		}
		if line == nil {
			return got, lines
		}
		if ls, err := lineSeq(line); err != nil || ls != seq {
			t.Fatalf("Next returned seq %d with a line of seq %d (%v)", seq, ls, err)
		}
		got = append(got, seq)
		lines = append(lines, append([]byte(nil), line...))
	}
}

func seqs(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func TestSpoolFollowsTheWriter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	log, logs := testLogger(t)
	// Opened before the writer made its directory.
	s, err := openSpool(dir, 0, "", log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	w := newSpoolWriter(t, dir, "px-1")
	step := func(name string, limit uint64, want []uint64) {
		t.Helper()
		if got := next(t, s, limit); !slices.Equal(got, want) {
			t.Fatalf("%s: Next up to %d gave %v, want %v", name, limit, got, want)
		}
	}
	w.append(5)
	step("only what is durable", 3, seqs(1, 3))
	step("the rest once durable", 5, seqs(4, 5))
	step("nothing new", 5, nil)
	w.rotate()
	w.append(3)
	w.rotate()
	w.append(2)
	step("across two rotations", 10, seqs(6, 10))

	line := w.line()
	if _, err := w.file().Write(line[:10]); err != nil {
		t.Fatal(err)
	}
	step("a line being written", 11, nil)
	// Line 11 is completed, and 12 and 13 are written but not durable:
	// reading 11 buffers them. The writer's fsync fails, it cuts them
	// back and writes them again (here with other bytes).
	if _, err := w.file().Write(append(line[10:], '\n')); err != nil {
		t.Fatal(err)
	}
	w.lines = append(w.lines, line)
	w.append(2)
	step("the line once complete", 11, []uint64{11})
	fi, err := w.file().Stat()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.file().Truncate(fi.Size() - int64(len(w.lines[11])+len(w.lines[12])+2)); err != nil {
		t.Fatal(err)
	}
	old := w.lines[11]
	w.seq, w.prev, w.lines = 11, lineHash(w.lines[10]), w.lines[:11]
	time.Sleep(10 * time.Microsecond) // another ts
	w.append(2)
	if bytes.Equal(old, w.lines[11]) {
		t.Fatal("the rewritten line 12 is the same as the one cut back")
	}
	got, lines := nextLines(t, s, 13)
	if !slices.Equal(got, seqs(12, 13)) || !bytes.Equal(lines[0], w.lines[11]) || !bytes.Equal(lines[1], w.lines[12]) {
		t.Fatalf("after the cut back: %v\n%s\nwant\n%s", got, bytes.Join(lines, []byte("\n")), bytes.Join(w.lines[11:], []byte("\n")))
	}

	w.seq++ // 14 is missing
	w.append(2)
	step("a gap, beyond what is durable", 14, nil)
	step("after the gap", 16, seqs(15, 16))
	if !strings.Contains(logs.String(), "the trail has a gap") {
		t.Errorf("the gap is not logged:\n%s", logs.String())
	}

	// Reopened after seq 7, the spool continues at 8 and checks 7's hash.
	lines = w.Lines()
	s2, err := openSpool(dir, 7, lineHash(lines[6]), log)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.close()
	if got := next(t, s2, 11); !slices.Equal(got, seqs(8, 11)) {
		t.Fatalf("reopened after 7: %v", got)
	}
	if _, err := openSpool(dir, 7, lineHash(lines[5]), log); err == nil || !strings.Contains(err.Error(), "has another hash") {
		t.Fatalf("reopened after 7 with 6's hash: %v", err)
	}
}

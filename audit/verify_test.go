package audit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// locate returns the file and line index (from 0) of seq.
func locate(t testing.TB, dir string, seq uint64) (string, int) {
	t.Helper()
	for _, s := range segments(t, dir) {
		for i, l := range readLines(t, s.Path) {
			if ev, err := Parse(l); err == nil && ev.Seq == seq {
				return s.Path, i
			}
		}
	}
	t.Fatalf("seq %d not in the trail", seq)
	return "", 0
}

// editLine replaces the line of seq with what edit makes of it.
func editLine(t testing.TB, dir string, seq uint64, edit func([]byte) []byte) {
	t.Helper()
	path, i := locate(t, dir, seq)
	lines := readLines(t, path)
	lines[i] = edit(lines[i])
	writeLines(t, path, lines)
}

// rehash parses line, lets change alter the event and marshals it again
// with a correct hash: what someone who can write the files but does not
// hold the signing key can do.
func rehash(t testing.TB, line []byte, change func(*Event)) []byte {
	t.Helper()
	ev, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	change(ev)
	out, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

// rechain lets change alter every event from seq from onward and re-hashes
// the chain from there: each later line's prev is the new hash before it,
// so only a checkpoint signature can tell.
func rechain(t testing.TB, dir string, from uint64, change func(*Event)) {
	t.Helper()
	prev := ""
	for _, s := range segments(t, dir) {
		lines := readLines(t, s.Path)
		for i, l := range lines {
			if len(l) == 0 {
				continue
			}
			if ev, _ := Parse(l); ev.Seq < from {
				continue
			}
			lines[i] = rehash(t, l, func(e *Event) {
				change(e)
				if e.Seq > from {
					e.Prev = prev
				}
			})
			ev, _ := Parse(lines[i])
			prev = ev.Hash
		}
		writeLines(t, s.Path, lines)
	}
}

// cutFrom returns a tampering that cuts the lines from seq on off the
// trail, whole.
func cutFrom(seq uint64) func(*testing.T, string, *trailSigner) {
	return func(t *testing.T, dir string, _ *trailSigner) {
		path, i := locate(t, dir, seq)
		writeLines(t, path, readLines(t, path)[:i])
	}
}

// removeFile returns a tampering that removes the file starting at seq.
func removeFile(seq uint64) func(*testing.T, string, *trailSigner) {
	return func(t *testing.T, dir string, _ *trailSigner) {
		os.Remove(filepath.Join(dir, FileName(seq)))
	}
}

func verify(t testing.TB, dir string, opts VerifyOptions) *VerifyReport {
	t.Helper()
	rep, err := Verify(segments(t, dir), opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

const (
	sampleN       = 40
	samplePerFile = 10
	sampleCkEvery = 8
)

func TestVerifyIntactTrail(t *testing.T) {
	key := newTrailSigner(t)
	dir := t.TempDir()
	tt := sampleTrail(t, dir, key, sampleN, samplePerFile, sampleCkEvery)
	state := filepath.Join(t.TempDir(), "verify.json")
	rep := verify(t, dir, VerifyOptions{Verifier: key.verifier, Head: tt.head, StateFile: state})
	if !rep.OK() {
		t.Fatalf("an untouched trail has problems: %v", rep.Problems)
	}
	// start + 40 statements + 1 completion = 42 events: 5 checkpoints
	// every 8, then stop and its checkpoint.
	type counts struct {
		Events, Checkpoints                         uint64
		Files                                       int
		FirstSeq, LastSeq, LastCheckpoint, Unsealed uint64
	}
	want := counts{Events: 49, Checkpoints: 6, Files: 5, FirstSeq: 1, LastSeq: 49, LastCheckpoint: 49, Unsealed: 0}
	got := counts{Events: rep.Events, Checkpoints: rep.Checkpoints, Files: rep.Files, FirstSeq: rep.FirstSeq,
		LastSeq: rep.LastSeq, LastCheckpoint: rep.LastCheckpoint, Unsealed: rep.Unsealed}
	if got != want {
		t.Fatalf("report %+v, want %+v", got, want)
	}
	if rep.LastHash != tt.head.Hash || !rep.SignaturesChecked {
		t.Fatalf("last hash %s (head %s), signatures checked %v", rep.LastHash, tt.head.Hash, rep.SignaturesChecked)
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "clean stop") {
		t.Fatalf("notes do not say the trail ended cleanly: %q", rep.Notes)
	}
	st, err := ReadVerifyState(state)
	if err != nil || st == nil || st.Seq != 49 || st.Hash != tt.head.Hash || st.Instance != "px-1" {
		t.Fatalf("state after a clean run: %+v, %v", st, err)
	}
	fi, err := os.Stat(state)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, %v", fi.Mode(), err)
	}
	// A second run against the state passes and says so.
	rep = verify(t, dir, VerifyOptions{Verifier: key.verifier, StateFile: state})
	if !rep.OK() || !strings.Contains(strings.Join(rep.Notes, "\n"), "still in the trail") {
		t.Fatalf("second run: %v %q", rep.Problems, rep.Notes)
	}
}

func TestVerifyUnsealedTailIsNotAProblem(t *testing.T) {
	key := newTrailSigner(t)
	dir := t.TempDir()
	tt := newTestTrail(t, dir, key, 100, 10)
	tt.add(Event{Action: ActionStart})
	for i := range 13 {
		tt.add(statement(i))
	}
	tt.close()
	rep := verify(t, dir, VerifyOptions{Verifier: key.verifier, Head: tt.head})
	if !rep.OK() || rep.Unsealed != 4 || rep.LastCheckpoint != 11 {
		t.Fatalf("running trail: problems %v, unsealed %d, last checkpoint %d", rep.Problems, rep.Unsealed, rep.LastCheckpoint)
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "4 events after the last checkpoint") {
		t.Fatalf("notes: %q", rep.Notes)
	}
}

// TestVerifyTampering: every way of altering a trail that the issue names
// is detected, and the first problem says where.
func TestVerifyTampering(t *testing.T) {
	type anchors int
	const (
		none  anchors = iota
		head          // the head file the writer keeps
		state         // a --state file from a run before the tampering
	)
	cases := []struct {
		name   string
		with   anchors
		tamper func(t *testing.T, dir string, key *trailSigner)
		seq    uint64
		file   string // base name; "" = not tied to a file
		line   int
		what   string
	}{
		{
			name: "a byte flipped in a value",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				editLine(t, dir, 14, func(b []byte) []byte { return bytes.Replace(b, []byte(`"psql"`), []byte(`"psqm"`), 1) })
			},
			seq: 14, file: FileName(11), line: 4, what: "hash does not match",
		},
		{
			name: "a byte flipped in the seq",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				editLine(t, dir, 23, func(b []byte) []byte { return bytes.Replace(b, []byte(`"seq":23`), []byte(`"seq":33`), 1) })
			},
			seq: 23, file: FileName(21), line: 3, what: "hash does not match",
		},
		{
			name: "a byte flipped so that the line no longer parses",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				editLine(t, dir, 5, func(b []byte) []byte { b[0] = '['; return b })
			},
			seq: 5, file: FileName(1), line: 5, what: "malformed line",
		},
		{
			name: "a field edited and the line re-hashed",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				editLine(t, dir, 14, func(b []byte) []byte { return rehash(t, b, func(e *Event) { e.DBUser = "mallory" }) })
			},
			seq: 15, file: FileName(11), line: 5, what: "prev does not match the hash of seq 14",
		},
		{
			name: "a field edited and the rest of the chain re-hashed",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				rechain(t, dir, 14, func(e *Event) {
					if e.Seq == 14 {
						e.DBUser = "mallory"
					}
				})
			},
			// The checkpoint after seq 14 is the first place where it shows.
			seq: 18, file: FileName(11), line: 8, what: "signature does not verify",
		},
		{
			name: "a line deleted",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				path, i := locate(t, dir, 27)
				lines := readLines(t, path)
				writeLines(t, path, append(lines[:i:i], lines[i+1:]...))
			},
			seq: 27, file: FileName(21), line: 7, what: "seq jumps from 26 to 28: seq 27 is missing",
		},
		{
			name: "two lines swapped",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				path, i := locate(t, dir, 32)
				lines := readLines(t, path)
				lines[i], lines[i+1] = lines[i+1], lines[i]
				writeLines(t, path, lines)
			},
			seq: 32, file: FileName(31), line: 2, what: "jumps from 31 to 33",
		},
		{
			name: "the tail truncated mid-line",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				path := filepath.Join(dir, FileName(41))
				b, _ := os.ReadFile(path)
				os.WriteFile(path, b[:len(b)-40], 0o600)
			},
			seq: 49, file: FileName(41), line: 9, what: "cut off mid-line",
		},
		{
			name:   "whole lines cut off a cleanly stopped trail, caught through the head file",
			with:   head,
			tamper: cutFrom(46),
			seq:    49, what: "the trail ends at seq 45 but the head file's checkpoint",
		},
		{
			name:   "whole lines cut off a cleanly stopped trail, caught through --state",
			with:   state,
			tamper: cutFrom(46),
			seq:    49, what: "the trail ends at seq 45 but the checkpoint verified on",
		},
		{
			name:   "a rotated file removed",
			tamper: removeFile(21),
			seq:    21, file: FileName(31), line: 1, what: "the file holding seq 21..30 is missing",
		},
		{
			name:   "the first file removed",
			tamper: removeFile(1),
			seq:    11, file: FileName(11), line: 1, what: "starts at seq 11, not 1",
		},
		{
			name:   "the last file removed, caught through the head file",
			with:   head,
			tamper: removeFile(41),
			seq:    49, what: "ends at seq 40",
		},
		{
			name: "a rotated file emptied",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				os.WriteFile(filepath.Join(dir, FileName(21)), nil, 0o600)
			},
			seq: 21, file: FileName(21), what: "the file is empty",
		},
		{
			name: "a file renamed",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				os.Rename(filepath.Join(dir, FileName(21)), filepath.Join(dir, FileName(22)))
			},
			seq: 21, file: FileName(22), line: 1, what: "name says it starts at seq 22",
		},
		{
			name: "the trail replaced by a shorter valid-looking one, caught with --state",
			with: state,
			tamper: func(t *testing.T, dir string, key *trailSigner) {
				segs := segments(t, dir)
				for _, s := range segs {
					os.Remove(s.Path)
				}
				// Whoever did it even held the signing key.
				sampleTrail(t, dir, key, 20, samplePerFile, sampleCkEvery)
			},
			seq: 49, what: "truncated or replaced by a shorter one",
		},
		{
			name: "a checkpoint signed by another key",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				other := newTrailSigner(t)
				editLine(t, dir, 9, func(b []byte) []byte {
					return rehash(t, b, func(e *Event) {
						e.Sign(other)
					})
				})
			},
			seq: 9, file: FileName(1), line: 9, what: "signature does not verify",
		},
		{
			name: "a completion pointing forward",
			tamper: func(t *testing.T, dir string, _ *trailSigner) {
				rechain(t, dir, 6, func(e *Event) {
					if e.Action == ActionCompletion {
						e.Ref = 40
					}
				})
			},
			seq: 6, file: FileName(1), line: 6, what: "completion refers to seq 40",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := newTrailSigner(t)
			dir := t.TempDir()
			tt := sampleTrail(t, dir, key, sampleN, samplePerFile, sampleCkEvery)
			opts := VerifyOptions{Verifier: key.verifier}
			switch c.with {
			case head:
				opts.Head = tt.head
			case state:
				opts.StateFile = filepath.Join(t.TempDir(), "verify.json")
				if rep := verify(t, dir, opts); !rep.OK() {
					t.Fatalf("before tampering: %v", rep.Problems)
				}
			}
			c.tamper(t, dir, key)
			rep := verify(t, dir, opts)
			if rep.OK() {
				t.Fatalf("tampering not detected; report %+v", rep)
			}
			p := rep.Problems[0]
			if p.Seq != c.seq || p.File != c.file || p.Line != c.line || !strings.Contains(p.What, c.what) {
				t.Errorf("first problem %q\nwant seq %d file %q line %d: …%s…", p, c.seq, c.file, c.line, c.what)
			}
			if c.with == state {
				st, _ := ReadVerifyState(opts.StateFile)
				if st.Seq != 49 {
					t.Errorf("a failed run moved the state to seq %d", st.Seq)
				}
			}
		})
	}
}

// TestVerifyStateAnchorsAPrunedTrail: files removed by retention before
// the state's checkpoint are accepted with a state file (what remains is
// bound to the checkpoint verified before), refused without one; the state
// moves forward as the trail grows.
func TestVerifyStateAnchorsAPrunedTrail(t *testing.T) {
	key := newTrailSigner(t)
	dir := t.TempDir()
	tt := newTestTrail(t, dir, key, samplePerFile, sampleCkEvery)
	tt.add(Event{Action: ActionStart})
	for i := range 30 {
		tt.add(statement(i))
	}
	state := filepath.Join(t.TempDir(), "verify.json")
	if rep := verify(t, dir, VerifyOptions{Verifier: key.verifier, StateFile: state}); !rep.OK() || rep.LastCheckpoint != 27 {
		t.Fatalf("first run: %v, last checkpoint %d", rep.Problems, rep.LastCheckpoint)
	}
	for i := range 10 {
		tt.add(statement(i))
	}
	tt.close()
	if err := os.Remove(filepath.Join(dir, FileName(1))); err != nil {
		t.Fatal(err)
	}
	if rep := verify(t, dir, VerifyOptions{Verifier: key.verifier}); rep.OK() {
		t.Fatal("a trail without its first file passes without a state file")
	}
	rep := verify(t, dir, VerifyOptions{Verifier: key.verifier, StateFile: state})
	if !rep.OK() || !strings.Contains(strings.Join(rep.Notes, "\n"), "earlier files were removed") {
		t.Fatalf("pruned trail with a state file: %v %q", rep.Problems, rep.Notes)
	}
	st, _ := ReadVerifyState(state)
	if st.Seq != 45 {
		t.Fatalf("state at seq %d after the trail grew, want 45", st.Seq)
	}
}

// TestVerifyTrailWrittenByTheWriter: what the Trail writes (statements
// and their completions, checkpoints, rotation, a restart, a clean stop)
// verifies, with its head file and a state file; cutting the clean stop
// off is caught through both.
func TestVerifyTrailWrittenByTheWriter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	headFile := filepath.Join(dir, "..", "state", "audit-head.json")
	sig := newTrailSigner(t)
	ctx := context.Background()
	for run := range 2 {
		tr := openTrail(t, dir, sig, func(o *Options) { o.CheckpointEvery = 7; o.MaxFileBytes = 2048 })
		for i := range 12 {
			r := mustRecord(t, ctx, tr, &Event{Action: ActionRead, Session: fmt.Sprintf("s%d", run), DBUser: "alice",
				Columns: []string{"public.patients.ssn"}, Decision: DecisionAllowed, Query: "SELECT ssn FROM patients WHERE id = $1"})
			tr.Complete(ctx, r, int64(i), "", "")
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	segs := segments(t, dir)
	if len(segs) < 3 {
		t.Fatalf("%d files: the test wants rotation", len(segs))
	}
	head, err := ReadHead(headFile)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "verify.json")
	opts := VerifyOptions{Verifier: sig.verifier, Head: head, StateFile: state, Instance: "px-test"}
	rep := verify(t, dir, opts)
	if !rep.OK() || rep.LastSeq != head.Seq || rep.Unsealed != 0 || rep.Checkpoints < 4 || rep.Files != len(segs) {
		t.Fatalf("the writer's trail: %+v", rep)
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "clean stop") {
		t.Fatalf("notes: %q", rep.Notes)
	}
	found, _ := search(t, dir, Filter{Sessions: []string{"s1"}, Completions: true})
	if len(found) != 24 {
		t.Fatalf("search: %d events of session s1 with their completions, want 24", len(found))
	}

	last := segs[len(segs)-1].Path
	truncateAfter(t, last, ActionCompletion)
	for name, o := range map[string]VerifyOptions{
		"head":  {Verifier: sig.verifier, Head: head},
		"state": {Verifier: sig.verifier, StateFile: state},
	} {
		rep := verify(t, dir, o)
		if rep.OK() || rep.Problems[0].Seq != head.Seq || !strings.Contains(rep.Problems[0].What, "truncated") {
			t.Errorf("stop cut off, with the %s: %+v", name, rep.Problems)
		}
	}
}

// FuzzVerifyDetectsAnyChange: changing any byte of a trail, or cutting a
// file anywhere, is detected (with the head file for cuts), and the first
// problem names a seq that exists in the trail.
func FuzzVerifyDetectsAnyChange(f *testing.F) {
	key := newTrailSigner(f)
	src := f.TempDir()
	tt := sampleTrail(f, src, key, 12, 6, 4)
	var files [][]byte
	for _, s := range segments(f, src) {
		b, err := os.ReadFile(s.Path)
		if err != nil {
			f.Fatal(err)
		}
		files = append(files, b)
	}
	f.Add(uint8(0), uint16(5), byte('x'), false)
	f.Add(uint8(1), uint16(300), byte('}'), false)
	f.Add(uint8(2), uint16(100), byte(0), true)
	f.Add(uint8(1), uint16(0), byte('\n'), false)
	f.Fuzz(func(t *testing.T, file uint8, off uint16, b byte, cut bool) {
		i := int(file) % len(files)
		data := bytes.Clone(files[i])
		o := int(off) % len(data)
		if cut {
			data = data[:o]
		} else {
			if data[o] == b {
				return
			}
			data[o] = b
		}
		dir := t.TempDir()
		for j, s := range segments(t, src) {
			content := files[j]
			if j == i {
				content = data
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(s.Path)), content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		rep := verify(t, dir, VerifyOptions{Verifier: key.verifier, Head: tt.head})
		if rep.OK() {
			t.Fatalf("file %d: %s at %d not detected", i, map[bool]string{true: "cut", false: fmt.Sprintf("byte %q", b)}[cut], o)
		}
		if p := rep.Problems[0]; p.Seq == 0 || p.Seq > tt.head.Seq {
			t.Fatalf("first problem names seq %d: %s", p.Seq, p)
		}
	})
}

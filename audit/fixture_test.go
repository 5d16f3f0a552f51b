package audit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// trailSigner is an in-memory Ed25519 Tink keyset, as `keys create`
// makes: the trail's Signer and the verifier that checks it.
type trailSigner struct {
	tink.Signer
	verifier tink.Verifier
	id       uint32
}

func (s *trailSigner) KeyID() uint32 { return s.id }

func newTrailSigner(t testing.TB) *trailSigner {
	t.Helper()
	h, err := keyset.NewHandle(signature.ED25519KeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	s, err := signature.NewSigner(h)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := h.Public()
	if err != nil {
		t.Fatal(err)
	}
	v, err := signature.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := h.Primary()
	return &trailSigner{Signer: s, verifier: v, id: p.KeyID()}
}

// testTrail writes a trail the way the Trail does (chained lines, signed
// checkpoints, rotation by line count), so that the verifier and the
// search can be tested without a running writer.
type testTrail struct {
	t        testing.TB
	dir      string
	key      *trailSigner
	instance string
	perFile  int // lines per file
	ckEvery  int // a checkpoint after this many events

	seq     uint64
	prev    string
	f       *os.File
	inFile  int
	sinceCk int
	ts      time.Time
	head    *Head
}

func newTestTrail(t testing.TB, dir string, key *trailSigner, perFile, ckEvery int) *testTrail {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return &testTrail{t: t, dir: dir, key: key, instance: "px-1", perFile: perFile, ckEvery: ckEvery,
		prev: ZeroHash, ts: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
}

// add appends one event (seq, ts, instance, prev set here) and, when due,
// a checkpoint.
func (tt *testTrail) add(ev Event) *Event {
	tt.t.Helper()
	e := tt.write(ev)
	if ev.Action != ActionCheckpoint {
		tt.sinceCk++
		if tt.ckEvery > 0 && tt.sinceCk >= tt.ckEvery {
			tt.checkpoint()
		}
	}
	return e
}

func (tt *testTrail) write(ev Event) *Event {
	tt.t.Helper()
	if tt.f == nil || tt.inFile >= tt.perFile {
		if tt.f != nil {
			tt.f.Close()
		}
		f, err := os.OpenFile(filepath.Join(tt.dir, FileName(tt.seq+1)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			tt.t.Fatal(err)
		}
		tt.f, tt.inFile = f, 0
	}
	tt.seq++
	tt.ts = tt.ts.Add(time.Second)
	ev.Seq, ev.Prev, ev.TS = tt.seq, tt.prev, FormatTime(tt.ts)
	if ev.Instance == "" {
		ev.Instance = tt.instance
	}
	if ev.Action == ActionCheckpoint {
		if err := ev.Sign(tt.key); err != nil {
			tt.t.Fatal(err)
		}
	}
	line, err := ev.Marshal()
	if err != nil {
		tt.t.Fatal(err)
	}
	if _, err := tt.f.Write(append(line, '\n')); err != nil {
		tt.t.Fatal(err)
	}
	tt.inFile++
	tt.prev = ev.Hash
	return &ev
}

func (tt *testTrail) checkpoint() {
	e := tt.write(Event{Action: ActionCheckpoint})
	tt.sinceCk = 0
	tt.head = &Head{Instance: e.Instance, Seq: e.Seq, Hash: e.Hash, File: filepath.Base(tt.f.Name()), TS: e.TS}
}

// stop ends the run cleanly: stop, checkpoint.
func (tt *testTrail) stop() {
	tt.write(Event{Action: ActionStop})
	tt.checkpoint()
	tt.close()
}

func (tt *testTrail) close() {
	if tt.f != nil {
		tt.f.Close()
		tt.f = nil
	}
}

func rows(n int64) *int64 { return &n }

// statement returns the i-th sample statement event.
func statement(i int) Event {
	users := []string{"alice", "bob", "carol"}
	ev := Event{Session: fmt.Sprintf("s%04d", i%7), DBUser: users[i%3], Roles: []string{[]string{"physician", "registrar", "analyst"}[i%3]},
		EndUser: fmt.Sprintf("dr.%d", i%5), Application: "psql", Client: fmt.Sprintf("10.0.%d.%d:5%04d", i%2, i%250, i%1000),
		Database: "clinic", TLS: true, Action: ActionRead, Relations: []string{"public.patients"},
		Columns: []string{"public.patients.ssn"}, Decision: DecisionAllowed, Reason: "rule physician",
		Fingerprint: "f9a2356b11f47f20", Query: "SELECT ssn FROM patients WHERE id = $1", Rows: rows(1)}
	switch i % 4 {
	case 1:
		ev.Action, ev.Relations, ev.Columns, ev.Query = ActionWrite, []string{"public.visits"}, []string{"public.visits.patient_ssn"}, "INSERT INTO visits VALUES ($1, $2)"
	case 2:
		ev.Decision, ev.Rows, ev.Error = DecisionDenied, nil, "42501"
	case 3:
		ev.Decision, ev.Columns = DecisionMasked, []string{"public.patients.dob"}
	}
	return ev
}

// sampleTrail writes a cleanly stopped trail of n statements (with a
// start event, a completion record and checkpoints) in dir.
func sampleTrail(t testing.TB, dir string, key *trailSigner, n, perFile, ckEvery int) *testTrail {
	tt := newTestTrail(t, dir, key, perFile, ckEvery)
	tt.add(Event{Action: ActionStart, Detail: "test"})
	for i := 0; i < n; i++ {
		ev := statement(i)
		if i == 3 {
			ev.Rows = nil
			e := tt.add(ev)
			tt.add(Event{Action: ActionCompletion, Session: e.Session, Ref: e.Seq, Rows: rows(12)})
			continue
		}
		tt.add(ev)
	}
	tt.stop()
	return tt
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(b, []byte("\n"))
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func segments(t testing.TB, dir string) []Segment {
	t.Helper()
	segs, err := Segments(dir)
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// trailRecords reads every line of the trail in dir, each with its own copy
// of the bytes.
func trailRecords(t testing.TB, dir string) []Line {
	t.Helper()
	r := NewReader(segments(t, dir))
	defer r.Close()
	var out []Line
	for r.Next() {
		l := *r.Line()
		l.Bytes = append([]byte(nil), l.Bytes...)
		out = append(out, l)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

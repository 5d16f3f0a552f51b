package audit

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func search(t testing.TB, dir string, f Filter) ([]Event, ScanStats) {
	t.Helper()
	r := NewReader(segments(t, dir))
	defer r.Close()
	var out []Event
	st, err := Scan(r, NewMatcher(f), func(l *Line, ev *Event) error {
		if ev == nil {
			var err error
			if ev, err = Parse(l.Bytes); err != nil {
				return err
			}
		}
		out = append(out, *ev)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, st
}

func TestSearchFilters(t *testing.T) {
	key := newTrailSigner(t)
	dir := t.TempDir()
	tt := sampleTrail(t, dir, key, sampleN, samplePerFile, sampleCkEvery)
	_ = tt
	base := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	// statement(i): user alice/bob/carol (role physician/registrar/analyst)
	// by i%3; read ssn / write visits / denied ssn / masked dob by i%4;
	// client 10.0.(i%2).(i%250); session s%04d of i%7; end user dr.(i%5).
	count := func(ok func(i int) bool) int {
		n := 0
		for i := range sampleN {
			if ok(i) {
				n++
			}
		}
		return n
	}
	cases := []struct {
		name   string
		filter Filter
		want   int
	}{
		{"no filter selects every line", Filter{}, 49},
		{"a db user", Filter{DBUsers: []string{"alice"}}, count(func(i int) bool { return i%3 == 0 })},
		{"two db users", Filter{DBUsers: []string{"alice", "carol"}}, count(func(i int) bool { return i%3 != 1 })},
		{"a role matches the roles array", Filter{Roles: []string{"physician"}}, count(func(i int) bool { return i%3 == 0 })},
		{"a role name is not a db user", Filter{DBUsers: []string{"physician"}}, 0},
		{"an end user", Filter{EndUsers: []string{"dr.1"}}, count(func(i int) bool { return i%5 == 1 })},
		{"a relation, qualified", Filter{Relations: []string{"public.patients"}}, count(func(i int) bool { return i%4 != 1 })},
		{"a relation, by table name", Filter{Relations: []string{"visits"}}, count(func(i int) bool { return i%4 == 1 })},
		{"a relation name's tail that is not a name", Filter{Relations: []string{"tients"}}, 0},
		{"a column by name", Filter{Columns: []string{"ssn"}}, count(func(i int) bool { return i%4 == 0 || i%4 == 2 })},
		{"a column by table.column", Filter{Columns: []string{"patients.dob"}}, count(func(i int) bool { return i%4 == 3 })},
		{"an action", Filter{Actions: []string{ActionWrite}}, count(func(i int) bool { return i%4 == 1 })},
		{"a decision", Filter{Decisions: []string{DecisionDenied}}, count(func(i int) bool { return i%4 == 2 })},
		{"a client network", Filter{Clients: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}}, count(func(i int) bool { return i%2 == 1 })},
		{"a client address", Filter{Clients: []netip.Prefix{netip.MustParsePrefix("10.0.1.7/32")}}, 1},
		{"a session", Filter{Sessions: []string{"s0003"}}, count(func(i int) bool { return i%7 == 3 }) + 1}, // + the completion of i=3
		{"a session prefix", Filter{Sessions: []string{"s000"}}, sampleN + 1},
		{"criteria combine", Filter{DBUsers: []string{"alice"}, Decisions: []string{DecisionDenied}}, count(func(i int) bool { return i%12 == 6 })},
		{"until is exclusive", Filter{Until: base.Add(6 * time.Second)}, 5},
		{"since is inclusive", Filter{Since: base.Add(46 * time.Second)}, 4},
		{"since and until", Filter{Since: base.Add(2 * time.Second), Until: base.Add(4 * time.Second)}, 2},
		{"without completions", Filter{EndUsers: []string{"dr.3"}}, count(func(i int) bool { return i%5 == 3 })},
		{"with the completion of a selected event", Filter{EndUsers: []string{"dr.3"}, Completions: true}, count(func(i int) bool { return i%5 == 3 }) + 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, st := search(t, dir, c.filter)
			if len(got) != c.want || st.Matched != int64(c.want) || st.Lines != 49 || st.Unreadable != 0 {
				t.Fatalf("%d events (stats %+v), want %d", len(got), st, c.want)
			}
		})
	}
}

func TestSearchSkipsUnreadableLines(t *testing.T) {
	key := newTrailSigner(t)
	dir := t.TempDir()
	sampleTrail(t, dir, key, sampleN, samplePerFile, sampleCkEvery)
	editLine(t, dir, 2, func(b []byte) []byte { return b[10:] })
	path := filepath.Join(dir, FileName(41))
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)-20], 0o600)
	got, st := search(t, dir, Filter{})
	if len(got) != 47 || st.Unreadable != 1 || st.Partial != 1 {
		t.Fatalf("%d events, stats %+v", len(got), st)
	}
}

func TestTailAndFollow(t *testing.T) {
	key := newTrailSigner(t)
	dir := t.TempDir()
	tt := newTestTrail(t, dir, key, samplePerFile, 0)
	for i := range 25 {
		tt.add(statement(i))
	}
	segs, err := TailSegments(segments(t, dir), 7)
	if err != nil || len(segs) != 2 || segs[0].First != 11 {
		t.Fatalf("tail segments %v, %v", segs, err)
	}
	f := NewFollower(dir, segs[0])
	var seqs []uint64
	poll := func() {
		t.Helper()
		if err := f.Poll(func(l *Line) error {
			ev, err := Parse(l.Bytes)
			if err != nil {
				return fmt.Errorf("%s line %d: %v", l.File, l.No, err)
			}
			seqs = append(seqs, ev.Seq)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	poll()
	if len(seqs) != 15 || seqs[0] != 11 || seqs[14] != 25 {
		t.Fatalf("first poll: %v", seqs)
	}
	seqs = nil
	poll()
	if len(seqs) != 0 {
		t.Fatalf("a poll without new lines returned %v", seqs)
	}
	// Half a line, then the rest; then a rotation.
	tt.add(statement(25))
	tt.close()
	path := filepath.Join(dir, FileName(21))
	full, _ := os.ReadFile(path)
	cut := len(full) - 30
	os.WriteFile(path, full[:cut], 0o600)
	poll()
	if len(seqs) != 0 {
		t.Fatalf("a partial line was returned: %v", seqs)
	}
	os.WriteFile(path, full, 0o600)
	for i := 26; i < 33; i++ {
		tt.add(statement(i))
	}
	tt.close()
	poll()
	want := []uint64{26, 27, 28, 29, 30, 31, 32, 33}
	if fmt.Sprint(seqs) != fmt.Sprint(want) {
		t.Fatalf("after completion and rotation: %v, want %v", seqs, want)
	}
}

// BenchmarkSearch searches a trail of 1 M events (docs/performance.md,
// "Audit search").
func BenchmarkSearch(b *testing.B) {
	const n = 1_000_000
	dir := b.TempDir()
	writeBenchTrail(b, dir, n)
	segs := segments(b, dir)
	for _, c := range []struct {
		name string
		f    Filter
	}{
		{"selective", Filter{EndUsers: []string{"dr.3"}, Columns: []string{"ssn"}, DBUsers: []string{"alice"}}},
		{"since-and-role", Filter{Since: time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC), Roles: []string{"physician"}}},
		{"all-lines", Filter{}},
		{"all-events", Filter{Until: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var st ScanStats
			for b.Loop() {
				r := NewReader(segs)
				var err error
				st, err = Scan(r, NewMatcher(c.f), func(*Line, *Event) error { return nil })
				r.Close()
				if err != nil || st.Lines != n {
					b.Fatalf("%+v %v", st, err)
				}
			}
			b.ReportMetric(float64(n)/(b.Elapsed().Seconds()/float64(b.N)), "events/s")
			b.ReportMetric(float64(st.Matched), "matched")
		})
	}
}

func writeBenchTrail(b *testing.B, dir string, n int) {
	prev := ZeroHash
	ts := time.Date(2026, 11, 17, 0, 0, 0, 0, time.UTC)
	var w *bufio.Writer
	var f *os.File
	var line []byte
	for i := range n {
		if i%250_000 == 0 {
			if w != nil {
				w.Flush()
				f.Close()
			}
			var err error
			f, err = os.Create(filepath.Join(dir, FileName(uint64(i+1))))
			if err != nil {
				b.Fatal(err)
			}
			w = bufio.NewWriterSize(f, 1<<20)
		}
		ev := statement(i)
		ev.Seq, ev.Prev, ev.Instance = uint64(i+1), prev, "px-1"
		ev.TS = FormatTime(ts.Add(time.Duration(i) * 600 * time.Millisecond))
		var err error
		line, err = ev.AppendLine(line[:0])
		if err != nil {
			b.Fatal(err)
		}
		w.Write(line)
		w.WriteByte('\n')
		prev = ev.Hash
	}
	w.Flush()
	f.Close()
}

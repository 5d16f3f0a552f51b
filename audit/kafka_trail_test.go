package audit

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
)

// trailLines reads every line of the trail in dir.
func trailLines(t *testing.T, dir string) [][]byte {
	var out [][]byte
	for _, l := range trailRecords(t, dir) {
		out = append(out, l.Bytes)
	}
	return out
}

// TestExportTrail exports what the real Trail writes — concurrent
// statements with their completions, checkpoints, rotations, the stop
// and final checkpoint of a clean close — across a restart of both the
// trail and the exporter, in the order serve shuts them down (the trail
// closes first, then the exporter drains).
func TestExportTrail(t *testing.T) {
	c := newCluster(t)
	dir, state := filepath.Join(t.TempDir(), "audit"), t.TempDir()
	sig := newTrailSigner(t)
	log, _ := testLogger(t)
	ctx := context.Background()

	run := func(statements int) {
		tr := openTrail(t, dir, sig, func(o *Options) { o.CheckpointEvery = 50; o.MaxFileBytes = 16 << 10; o.Instance = "px-1" })
		e, err := NewExporter(kafkaConfig(c, 100000), dir, state, "px-1", tr.Durable, tr.Notify(), log)
		if err != nil {
			t.Fatal(err)
		}
		stop := runExporter(t, e)
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < statements/4; i++ {
					r, err := tr.Record(ctx, &Event{Action: ActionRead, Session: "s1", DBUser: "app", Relations: []string{"public.patients"},
						Columns: []string{"public.patients.ssn"}, Decision: DecisionAllowed, Query: "SELECT ssn FROM patients WHERE id = $1"}, true)
					if err != nil {
						t.Error(err)
						return
					}
					if err := r.Wait(ctx); err != nil {
						t.Error(err)
						return
					}
					tr.Complete(ctx, r, 1, "", "")
				}
			}()
		}
		wg.Wait()
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		last := tr.Durable()
		stop() // Run drains what is durable, stop and final checkpoint included
		if e.Exported() != last {
			t.Fatalf("exported %d after the stop, the trail ends at %d", e.Exported(), last)
		}
	}
	run(200)
	run(100)

	lines := trailLines(t, dir)
	segs, _ := Segments(dir)
	if len(segs) < 3 {
		t.Errorf("%d trail files: the test wants rotations", len(segs))
	}
	if len(lines) < 300 {
		t.Fatalf("%d lines in the trail, want more than 300", len(lines))
	}
	if dups := checkExported(t, consume(t, c.ListenAddrs(), len(lines)), lines, "px-1"); dups != 0 {
		t.Errorf("%d events sent twice across clean restarts", dups)
	}
}

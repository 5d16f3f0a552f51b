package phi

import "testing"

// TestFIFOKeepsOrderAcrossGrowthAndWrap pushes and pops in patterns that
// wrap the ring and grow it while it wraps: the entries come out in the
// order they went in.
func TestFIFOKeepsOrderAcrossGrowthAndWrap(t *testing.T) {
	var f fifo
	next, want := 0, 0
	push := func(n int) {
		for range n {
			f.push(&entry{kind: entrySync, poisonCode: string(rune('a' + next%26)), describe: byte(next)})
			next++
		}
	}
	pop := func(n int) {
		for range n {
			if f.n == 0 {
				t.Fatalf("empty after %d of %d pushed", want, next)
			}
			e := f.front()
			if e.describe != byte(want) || e.poisonCode != string(rune('a'+want%26)) {
				t.Fatalf("entry %d came out as %d", want, e.describe)
			}
			if k := f.pop(); k != entrySync {
				t.Fatalf("pop returned kind %q", k)
			}
			want++
		}
	}
	for _, step := range [][2]int{{5, 3}, {6, 4}, {10, 2}, {30, 40}, {3, 3}, {100, 50}, {1, 53}} {
		push(step[0])
		pop(step[1])
	}
	if f.n != 0 || want != next {
		t.Fatalf("%d entries left, %d of %d popped", f.n, want, next)
	}
}

// TestFIFODropsABigRingOnceEmpty checks that a burst of pipelined
// messages does not pin its ring for the session's life.
func TestFIFODropsABigRingOnceEmpty(t *testing.T) {
	var f fifo
	for range 2 * fifoKeep {
		f.push(&entry{kind: entryExecute})
	}
	for f.n > 0 {
		f.pop()
	}
	if f.ring != nil {
		t.Fatalf("ring of %d kept after emptying", len(f.ring))
	}
	f.push(&entry{kind: entrySync})
	if f.front().kind != entrySync {
		t.Fatal("wrong front after regrowing")
	}
}

package testenv

import (
	"bytes"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBufferConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("ab"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.Bytes(); len(got) != 800 || !bytes.Equal(got, bytes.Repeat([]byte("ab"), 400)) {
		t.Fatalf("after 400 writes of \"ab\" the buffer holds %d bytes", len(got))
	}
	got := b.Bytes()
	got[0] = 'x'
	if b.String()[0] != 'a' {
		t.Fatal("Bytes returned the buffer itself, not a copy")
	}
}

// TestOnlyTestsImportIt keeps this package out of the proxy's binaries: a
// package's non-test files must not import it.
func TestOnlyTestsImportIt(t *testing.T) {
	const self = "github.com/phiproxy/phiproxy/internal/testenv"
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	out, err := exec.Command(goBin, "list", "-e", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", "github.com/phiproxy/phiproxy/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		for _, imp := range strings.Fields(imports) {
			if imp == self {
				t.Errorf("%s imports %s outside its tests", pkg, self)
			}
		}
	}
}

func TestEventually(t *testing.T) {
	n := 0
	if !Eventually(time.Second, time.Millisecond, func() bool { n++; return n == 3 }) || n != 3 {
		t.Errorf("a condition that holds at the third poll: %d polls", n)
	}
	start := time.Now()
	if Eventually(30*time.Millisecond, time.Millisecond, func() bool { return false }) {
		t.Error("a condition that never holds was reported to hold")
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("gave up after %v, before 30ms", d)
	}
}

func TestBufferAwait(t *testing.T) {
	var b Buffer
	go func() {
		time.Sleep(50 * time.Millisecond)
		b.Write([]byte("late line\n"))
	}()
	if !b.Await(5*time.Second, func(s string) bool { return s == "late line\n" }) {
		t.Fatalf("Await missed a line written later: %q", b.String())
	}
	if b.Await(30*time.Millisecond, func(s string) bool { return s == "never" }) {
		t.Fatal("Await reported a condition that never held")
	}
}

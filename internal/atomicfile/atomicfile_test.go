package atomicfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
)

// TestWrite: Write creates the file with the mode asked and replaces it
// whole on a later write (a shorter content leaves nothing of the longer
// one); whether it succeeds or fails, no temporary file stays behind.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	head, taken := filepath.Join(dir, "head.json"), filepath.Join(dir, "taken")
	// A directory in the way makes the rename fail.
	if err := os.MkdirAll(filepath.Join(taken, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		path, content string
		perm          os.FileMode
		fails         bool
	}{
		{path: head, content: "first, longer content\n", perm: 0o600},
		{path: head, content: "second\n", perm: 0o640},
		{path: taken, content: "data", perm: 0o600, fails: true},
	} {
		err := atomicfile.Write(w.path, []byte(w.content), w.perm)
		if w.fails {
			if err == nil {
				t.Fatalf("Write over a non-empty directory succeeded")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(w.path); string(b) != w.content {
			t.Fatalf("content %q, want %q", b, w.content)
		}
		if fi, _ := os.Stat(w.path); fi.Mode().Perm() != w.perm {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), w.perm)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("%d entries in the directory, want the file and the directory in the way", len(ents))
	}
}

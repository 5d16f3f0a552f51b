package atomicfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
)

// TestWrite: Write creates the file with the mode asked, replaces it whole
// on a later write (a shorter content leaves nothing of the longer one),
// and leaves no temporary file behind, whether it succeeds or fails.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "head.json")
	for _, w := range []struct {
		content string
		perm    os.FileMode
	}{{"first, longer content\n", 0o600}, {"second\n", 0o640}} {
		if err := atomicfile.Write(path, []byte(w.content), w.perm); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != w.content {
			t.Fatalf("content %q, want %q", b, w.content)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != w.perm {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), w.perm)
		}
	}
	// A directory in the way makes the rename fail.
	taken := filepath.Join(dir, "taken")
	if err := os.MkdirAll(filepath.Join(taken, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if atomicfile.Write(taken, []byte("data"), 0o600) == nil {
		t.Fatal("Write over a non-empty directory succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("%d entries in the directory, want the file and the directory in the way", len(ents))
	}
}

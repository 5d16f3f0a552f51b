package auth

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadMockSecret(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, err := LoadMockSecret(dir)
	if err != nil || len(first) != mockSecretLen {
		t.Fatalf("LoadMockSecret created %d bytes, %v", len(first), err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, MockSecretFile): 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, %v; want %04o", path, st.Mode().Perm(), err, want)
		}
	}
	again, err := LoadMockSecret(dir)
	if err != nil || !bytes.Equal(again, first) {
		t.Fatalf("second load: %x, %v; want the secret created first", again, err)
	}
	if other, _ := LoadMockSecret(t.TempDir()); bytes.Equal(other, first) {
		t.Fatal("two state dirs got the same secret")
	}

	// Instances starting together on one state_dir agree on one secret.
	shared := t.TempDir()
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _ = LoadMockSecret(shared)
		}()
	}
	wg.Wait()
	for i := range got {
		if len(got[i]) != mockSecretLen || !bytes.Equal(got[i], got[0]) {
			t.Fatalf("concurrent loads disagree: %x vs %x", got[i], got[0])
		}
	}
}

func TestLoadMockSecretRefuses(t *testing.T) {
	for _, c := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"readable by others", strings.Repeat("ab", 32), 0o644, "must be 0600"},
		{"too short", strings.Repeat("ab", 16), 0o600, "32 or more bytes"},
		{"not hex", strings.Repeat("zz", 32), 0o600, "32 or more bytes"},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, MockSecretFile)
		if err := os.WriteFile(path, []byte(c.content), c.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, c.mode)
		if _, err := LoadMockSecret(dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

package pgcluster

import (
	"os"
	"testing"
)

func TestWritePgpass(t *testing.T) {
	c := &Cluster{Dir: t.TempDir(), SuperUser: "postgres", SuperPassword: `a:b\c`}
	path, err := c.WritePgpass()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := `*:*:*:postgres:a\:b\\c` + "\n"; string(b) != want {
		t.Errorf("pgpass holds %q, want %q", b, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pgpass mode %v, want 0600: libpq ignores a file others can read", fi.Mode().Perm())
	}
}

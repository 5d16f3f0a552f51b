package phi

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/policy"
)

func TestLockdownFileRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if l, err := ReadLockdownFile(dir); err != nil || l.On {
		t.Fatalf("no state file: %+v, %v; want off", l, err)
	}
	want := policy.Lockdown{On: true, Reason: "suspected breach", By: "ops", Since: time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC)}
	if err := WriteLockdownFile(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadLockdownFile(dir)
	if err != nil || got != want {
		t.Fatalf("read back %+v, %v; want %+v", got, err, want)
	}
	fi, err := os.Stat(filepath.Join(dir, policy.LockdownFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %04o, want 0600", fi.Mode().Perm())
	}
}

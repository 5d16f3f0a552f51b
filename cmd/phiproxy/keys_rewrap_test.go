package main

import (
	"os"
	"strings"
	"testing"
)

// TestKeysRewrap moves the keysets to a new file KEK with the CLI: the
// old config no longer opens them, the config naming the new KEK does, and
// a second run finds nothing left to do.
func TestKeysRewrap(t *testing.T) {
	_, cfg := keysConfig(t)
	mustKeys(t, "init", "--config", cfg)
	before := listKeys(t, cfg)

	if _, errs, code := keysRun(t, "rewrap", "--config", cfg); code != 2 || !strings.Contains(errs, "--to") {
		t.Fatalf("rewrap without --to: exit %d, %s", code, errs)
	}
	out := mustKeys(t, "rewrap", "--to", "file:kek2.json", "--config", cfg)
	for _, want := range []string{"created KEK file", "key public.patients.ssn: rewrapped under file:kek2.json", "every keyset of", `set keys.kek to "file:kek2.json"`, "audit: key_rotated recorded"} {
		if !strings.Contains(out, want) {
			t.Errorf("rewrap output lacks %q:\n%s", want, out)
		}
	}
	if _, errs, code := keysRun(t, "list", "--config", cfg); code == 0 || !strings.Contains(errs, "wrong KEK") {
		t.Fatalf("the old KEK still opens the keysets: exit %d, %s", code, errs)
	}
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(data), `kek: "file:kek.json"`, `kek: "file:kek2.json"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	after := listKeys(t, cfg)
	if len(after) != len(before) {
		t.Fatalf("keys before %v, after %v", before, after)
	}
	for i := range before {
		if before[i].KeyID != after[i].KeyID || before[i].Status != after[i].Status {
			t.Fatalf("key %d changed: %+v → %+v", i, before[i], after[i])
		}
	}
	// Now the config names the new KEK: rewrapping to it again rewrites
	// every file under it (Vault's newest key version).
	out = mustKeys(t, "rewrap", "--to", "file:kek2.json", "--config", cfg)
	if strings.Count(out, "rewrapped under") != 3 || strings.Contains(out, "already") {
		t.Fatalf("second rewrap:\n%s", out)
	}
}

package crypto

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/config"
)

// testPHI is a phi map with a shared deterministic key, a randomized
// column and a column with a custom key name.
const testPHI = `
phi:
  public.patients:
    ssn:       {type: text, mode: deterministic}
    diagnosis: {type: text, mode: randomized}
  public.visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn}
    note:        {type: text, mode: randomized, key: "visit notes/v1"}
`

// writeConfig writes a config file into dir and loads it.
func writeConfig(t testing.TB, dir, kek, phi string) *config.Config {
	t.Helper()
	kekLine := ""
	if kek != "" {
		kekLine = fmt.Sprintf("keys: {dir: keys/, kek: %q}\n", kek)
	}
	doc := "listen: 127.0.0.1:6432\nupstream: {address: 127.0.0.1:5432, sslmode: disable}\ncatalog_dsn: postgres://cat@127.0.0.1/db\n" + kekLine + phi
	path := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// fixedClock returns a clock that advances one second per call, so
// creation times order keys deterministically.
func fixedClock() func() time.Time {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return func() time.Time {
		t = t.Add(time.Second)
		return t
	}
}

// setup makes a file KEK and every keyset of cfg, as `keys init` does.
func setup(t testing.TB, phi string) (*config.Config, *Store) {
	t.Helper()
	cfg := writeConfig(t, t.TempDir(), "", phi)
	if _, err := InitFileKEK(strings.TrimPrefix(cfg.Keys.KEK, "file:")); err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(context.Background(), cfg.Keys, Options{Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAll(cfg, nil); err != nil {
		t.Fatal(err)
	}
	return cfg, st
}

func openRing(t testing.TB, cfg *config.Config) *Keyring {
	t.Helper()
	kr, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func mustCipher(t testing.TB, kr *Keyring, name string) *Cipher {
	t.Helper()
	c, err := kr.Cipher(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testRing is setup with testPHI and the keyring that opens its keys.
func testRing(t testing.TB) (*Keyring, *Store) {
	t.Helper()
	cfg, st := setup(t, testPHI)
	return openRing(t, cfg), st
}

func mustEncrypt(t testing.TB, c *Cipher, plaintext []byte) []byte {
	t.Helper()
	env, err := c.Encrypt(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

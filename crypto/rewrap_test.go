package crypto

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRewrapFileToFileResumes moves every keyset to a new file KEK; an
// interrupted run (one file still under the old KEK) is finished by the
// next; values encrypted before open after, under the new KEK only.
func TestRewrapFileToFileResumes(t *testing.T) {
	cfg, st := setup(t, testPHI)
	ctx := context.Background()
	env, _ := openRing(t, cfg).Encrypt("public.patients.ssn", []byte("123-45-6789"))
	newKEK := filepath.Join(t.TempDir(), "kek2.json")
	if _, err := InitFileKEK(newKEK); err != nil {
		t.Fatal(err)
	}
	ssnFile := filepath.Join(cfg.Keys.Dir, ColumnKey("public.patients.ssn").fileName())
	before, err := os.ReadFile(ssnFile)
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.Rewrap(ctx, "file:"+newKEK)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rewrapped) != 4 || len(res.Already) != 0 { // three column keysets and the signing one
		t.Fatalf("first run: %+v", res)
	}
	// As if the run had died before this file: it is under the old KEK.
	if err := os.WriteFile(ssnFile, before, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err = st.Rewrap(ctx, "file:"+newKEK)
	if err != nil || len(res.Rewrapped) != 1 || res.Rewrapped[0] != ColumnKey("public.patients.ssn") || len(res.Already) != 3 {
		t.Fatalf("resumed run: %+v, %v", res, err)
	}
	if _, err := Open(ctx, cfg, Options{}); err == nil || !strings.Contains(err.Error(), "wrong KEK") {
		t.Fatalf("the old KEK still opens the keysets: %v", err)
	}
	c := *cfg
	c.Keys.KEK = "file:" + newKEK
	kr := openRing(t, &c)
	if pt, err := kr.Decrypt("public.patients.ssn", env); err != nil || string(pt) != "123-45-6789" {
		t.Fatalf("a value from before the rewrap: %q, %v", pt, err)
	}
	if _, err := kr.Signer(); err != nil {
		t.Fatal(err)
	}
	// A keyset neither KEK opens is an error, not skipped.
	other := filepath.Join(t.TempDir(), "kek3.json")
	InitFileKEK(other)
	st2, _ := OpenStore(ctx, c.Keys, Options{})
	if _, err := st.Rewrap(ctx, "file:"+other); err == nil || !strings.Contains(err.Error(), "nor does the new KEK") {
		t.Fatalf("rewrap with a KEK that opens nothing: %v", err)
	}
	// Same KEK: everything is re-encrypted (Vault's newest key version).
	res, err = st2.Rewrap(ctx, "file:"+newKEK)
	if err != nil || len(res.Rewrapped) != 4 {
		t.Fatalf("rewrap under the same KEK: %+v, %v", res, err)
	}
}

// TestRewrapFileToVault moves keysets from a file KEK to a Vault transit
// key: afterwards they open through Vault and not with the file.
func TestRewrapFileToVault(t *testing.T) {
	cfg, st := setup(t, testPHI)
	ctx := context.Background()
	env, _ := openRing(t, cfg).Encrypt("public.patients.diagnosis", []byte("flu"))
	fv, srv, ca := newFakeVault(t, "s.goodtoken", "phiproxy")
	uri := "hcvault://" + strings.TrimPrefix(srv.URL, "https://") + "/transit/keys/phiproxy"
	venv := Env{VaultToken: "s.goodtoken", VaultCACert: ca}
	st.opts.Env = venv
	res, err := st.Rewrap(ctx, uri)
	if err != nil || len(res.Rewrapped) != 4 {
		t.Fatalf("rewrap to Vault: %+v, %v", res, err)
	}
	if fv.calls.Load() == 0 {
		t.Fatal("Vault was not called")
	}
	c := *cfg
	c.Keys.KEK = uri
	kr, err := Open(ctx, &c, Options{Env: venv})
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := kr.Decrypt("public.patients.diagnosis", env); err != nil || string(pt) != "flu" {
		t.Fatalf("a value from before the rewrap: %q, %v", pt, err)
	}
	if _, err := Open(ctx, cfg, Options{}); err == nil {
		t.Fatal("the file KEK still opens the keysets")
	}
}

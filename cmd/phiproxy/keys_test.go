package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

const keysTestConfig = `listen: 127.0.0.1:6432
upstream: {address: 127.0.0.1:5432, sslmode: disable}
catalog_dsn: postgres://cat@127.0.0.1/db
keys: {dir: keys/, kek: "file:kek.json"}
phi:
  public.patients:
    ssn:       {type: text, mode: deterministic}
    diagnosis: {type: text, mode: randomized}
  public.visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn}
`

// cmdRun runs `phiproxy ARGS` and returns stdout, stderr and the process
// exit code.
func cmdRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cmdEnv{stdout: &out, stderr: &errb}
	code := exitCode(env, run(context.Background(), env, args)) // prints the error
	return out.String(), errb.String(), code
}

// keysRun runs `phiproxy keys ARGS`.
func keysRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return cmdRun(t, append([]string{"keys"}, args...)...)
}

func keysConfig(t *testing.T) (dir, cfgPath string) {
	t.Helper()
	dir = t.TempDir()
	cfgPath = filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(keysTestConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, cfgPath
}

// mustRun runs `phiproxy ARGS` and returns stdout; it fails t unless the
// exit code is 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := cmdRun(t, args...)
	if code != 0 {
		t.Fatalf("phiproxy %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func mustKeys(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, append([]string{"keys"}, args...)...)
}

// openKeys loads the config at cfgPath and opens its keys.
func openKeys(t *testing.T, cfgPath string) (*config.Config, *crypto.Keyring) {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := crypto.Open(context.Background(), cfg, crypto.Options{Env: crypto.EnvFromOS()})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, kr
}

// listKeys returns `keys list --json` as rows.
func listKeys(t *testing.T, cfg string) []listRow {
	t.Helper()
	out := mustKeys(t, "list", "--json", "--config", cfg)
	var rows []listRow
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r listRow
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	return rows
}

func statuses(rows []listRow, key string) []string {
	var out []string
	for _, r := range rows {
		if r.Key == key {
			out = append(out, r.Status)
		}
	}
	return out
}

func TestKeysLifecycle(t *testing.T) {
	dir, cfg := keysConfig(t)

	out := mustKeys(t, "init", "--config", cfg)
	for _, want := range []string{"created KEK file", "key public.patients.ssn (deterministic, public.patients.ssn, public.visits.patient_ssn): created", "key public.patients.diagnosis (randomized, public.patients.diagnosis): created", "audit-signing keyset (ed25519): created"} {
		if !strings.Contains(out, want) {
			t.Errorf("init output lacks %q:\n%s", want, out)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "kek.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file: %v %v", fi, err)
	}
	kek, _ := os.ReadFile(filepath.Join(dir, "kek.json"))
	if out := mustKeys(t, "init", "--config", cfg); !strings.Contains(out, "exists: kept") || strings.Contains(out, "created") {
		t.Fatalf("second init:\n%s", out)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "kek.json")); !bytes.Equal(now, kek) {
		t.Fatal("second init replaced the KEK")
	}

	table := mustKeys(t, "list", "--config", cfg)
	if !regexp.MustCompile(`(?m)^KEY\s+MODE\s+KEY ID\s+STATUS\s+CREATED\s+PREFIX\s+COLUMNS$`).MatchString(table) ||
		!regexp.MustCompile(`(?m)^public\.patients\.ssn\s+deterministic\s+\d+\s+primary\s+\d{4}-\d\d-\d\dT\S+Z\s+\\x50480101[0-9a-f]{8}\s+public\.patients\.ssn, public\.visits\.patient_ssn$`).MatchString(table) {
		t.Fatalf("list table:\n%s", table)
	}
	// No key material: nothing of the KEK and no Tink key value.
	var kekDoc struct {
		Key []struct{ KeyData struct{ Value string } }
	}
	if err := json.Unmarshal(kek, &kekDoc); err != nil || len(kekDoc.Key) == 0 {
		t.Fatalf("KEK file: %v", err)
	}
	for _, forbidden := range []string{kekDoc.Key[0].KeyData.Value, "keyValue", "encryptedKeyset", "value"} {
		if strings.Contains(table, forbidden) {
			t.Fatalf("list prints %q", forbidden)
		}
	}

	// Rotate by column name: the shared key gets a new primary.
	before := listKeys(t, cfg)
	out = mustKeys(t, "rotate", "--column", "public.visits.patient_ssn", "--config", cfg)
	if !strings.Contains(out, "key public.patients.ssn: new primary key id") {
		t.Fatalf("rotate output:\n%s", out)
	}
	// The rotation is in the audit trail (no proxy holds it here).
	if !strings.Contains(out, "audit: key_rotated recorded in") {
		t.Fatalf("rotate output:\n%s", out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "audit", audit.FileName(1))); err != nil || !bytes.Contains(b, []byte(`"action":"key_rotated"`)) || !bytes.Contains(b, []byte(`"detail":"key public.patients.ssn: new primary key id`)) {
		t.Fatalf("audit trail after rotate: %v\n%s", err, b)
	}
	rows := listKeys(t, cfg)
	if got := strings.Join(statuses(rows, "public.patients.ssn"), ","); got != "enabled,primary" {
		t.Fatalf("after rotate: %s", got)
	}
	var oldID uint32
	for _, r := range before {
		if r.Key == "public.patients.ssn" {
			oldID = r.KeyID
		}
	}
	for _, r := range rows {
		if r.Key == "public.patients.ssn" && r.Status == "enabled" && r.KeyID != oldID {
			t.Fatalf("the old key %d is not the enabled one: %+v", oldID, r)
		}
	}
	idArg := []string{"retire", "--key", "public.patients.ssn", "--key-id", strFromID(oldID), "--config", cfg}

	// Retire refuses without an affirmation, then works with one.
	_, errs, code := keysRun(t, idArg...)
	if code != 2 || !strings.Contains(errs, "--confirm-unused") || !strings.Contains(errs, "--force") {
		t.Fatalf("retire without --confirm-unused: exit %d, %s", code, errs)
	}
	if got := strings.Join(statuses(listKeys(t, cfg), "public.patients.ssn"), ","); got != "enabled,primary" {
		t.Fatalf("a refused retire changed the keyset: %s", got)
	}
	// --confirm-unused counts the values under the key in the database;
	// this config's cannot be reached, so it refuses (integration's
	// TestRotateReencryptRetire covers the count).
	if _, errs, code := keysRun(t, append(idArg, "--confirm-unused")...); code != 1 || !strings.Contains(errs, "cannot check") {
		t.Fatalf("retire --confirm-unused without a database: exit %d, %s", code, errs)
	}
	out = mustKeys(t, append(idArg, "--force")...)
	if !strings.Contains(out, "retired key id") || !strings.Contains(out, "WARNING") {
		t.Fatalf("retire output:\n%s", out)
	}
	if got := strings.Join(statuses(listKeys(t, cfg), "public.patients.ssn"), ","); got != "primary,retired" {
		t.Fatalf("after retire: %s", got)
	}
	if _, errs, code := keysRun(t, append(idArg, "--force")...); code != 2 || !strings.Contains(errs, "already retired") {
		t.Fatalf("retire twice: exit %d, %s", code, errs)
	}

	// The primary key can never be retired, not even with --force.
	var primary uint32
	for _, r := range listKeys(t, cfg) {
		if r.Key == "public.patients.diagnosis" {
			primary = r.KeyID
		}
	}
	if _, errs, code := keysRun(t, "retire", "--column", "public.patients.diagnosis", "--key-id", strFromID(primary), "--force", "--config", cfg); code != 2 || !strings.Contains(errs, "primary") {
		t.Fatalf("retire primary: exit %d, %s", code, errs)
	}

	// --force prints its warning.
	mustKeys(t, "rotate", "--signing", "--config", cfg)
	var oldSigning uint32
	for _, r := range listKeys(t, cfg) {
		if r.Key == "audit-signing" && r.Status == "enabled" {
			oldSigning = r.KeyID
		}
	}
	if out := mustKeys(t, "retire", "--signing", "--key-id", strFromID(oldSigning), "--force", "--config", cfg); !strings.Contains(out, "WARNING") {
		t.Fatalf("retire --force output:\n%s", out)
	}

	// export-public is a public keyset that verifies the instance's signatures.
	pub := mustKeys(t, "export-public", "--config", cfg)
	v, err := crypto.NewVerifier([]byte(pub))
	if err != nil {
		t.Fatalf("export-public output is not a public keyset: %v\n%s", err, pub)
	}
	_, kr := openKeys(t, cfg)
	s, _ := kr.Signer()
	sig, _ := s.Sign([]byte("checkpoint"))
	if err := v.Verify(sig, []byte("checkpoint")); err != nil {
		t.Fatalf("exported key does not verify: %v", err)
	}
}

func strFromID(id uint32) string {
	b, _ := json.Marshal(id)
	return string(b)
}

func TestKeysListMissingExits1(t *testing.T) {
	dir, cfg := keysConfig(t)
	mustKeys(t, "init", "--config", cfg)
	if err := os.Remove(filepath.Join(dir, "keys", "column.public.patients.diagnosis.json")); err != nil {
		t.Fatal(err)
	}
	out, errs, code := keysRun(t, "list", "--config", cfg)
	if code != 1 || !strings.Contains(errs, "no keyset for public.patients.diagnosis") ||
		!regexp.MustCompile(`(?m)^public\.patients\.diagnosis\s+randomized\s+-\s+missing`).MatchString(out) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	mustKeys(t, "create", "--config", cfg)
	mustKeys(t, "list", "--config", cfg)
}

func TestKeysRefusals(t *testing.T) {
	dir, cfg := keysConfig(t)
	mustKeys(t, "init", "--config", cfg)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no action", nil, 2, "missing action"},
		{"an unknown action", []string{"burn", "--config", cfg}, 2, `unknown action "burn"`},
		{"no --config", []string{"list"}, 2, "--config FILE is required"},
		{"an unknown flag", []string{"list", "--config", cfg, "--nope"}, 2, "unknown flag"},
		{"rotate without a target", []string{"rotate", "--config", cfg}, 2, "exactly one of"},
		{"rotate with two targets", []string{"rotate", "--signing", "--key", "x", "--config", cfg}, 2, "exactly one of"},
		{"rotate an unknown column", []string{"rotate", "--column", "public.patients.name", "--config", cfg}, 2, "not a PHI column"},
		{"rotate an unknown key", []string{"rotate", "--key", "nope", "--config", cfg}, 2, "no keyset file"},
		{"retire without --key-id", []string{"retire", "--key", "public.patients.ssn", "--force", "--config", cfg}, 2, "--key-id ID is required"},
		{"retire with a bad key id", []string{"retire", "--key", "public.patients.ssn", "--key-id", "x1", "--force", "--config", cfg}, 2, "not a key id"},
		{"retire an unknown key id", []string{"retire", "--key", "public.patients.ssn", "--key-id", "7", "--force", "--config", cfg}, 2, "no key id 7"},
		{"a missing config", []string{"list", "--config", filepath.Join(dir, "nope.yaml")}, 2, "nope.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errs, code := keysRun(t, tt.args...)
			if code != tt.code || !strings.Contains(errs, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, errs, tt.code, tt.want)
			}
		})
	}

	// A KEK file others can read stops every action.
	if err := os.Chmod(filepath.Join(dir, "kek.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"list", "create", "init", "export-public"} {
		if _, errs, code := keysRun(t, action, "--config", cfg); code != 2 || !strings.Contains(errs, "mode 0644") {
			t.Errorf("%s with a 0644 KEK: exit %d, %s", action, code, errs)
		}
	}
}

func TestKeysHelp(t *testing.T) {
	_, cfg := keysConfig(t)
	out, _, code := keysRun(t, "--help")
	if code != 0 || !strings.Contains(out, "export-public") || !strings.Contains(out, "VAULT_TOKEN") {
		t.Fatalf("keys --help: exit %d\n%s", code, out)
	}
	for action := range keysActions() {
		_, errs, code := keysRun(t, action, "--help")
		if code != 0 || !strings.Contains(errs, "usage: phiproxy keys "+action) || !strings.Contains(errs, "--config") {
			t.Errorf("keys %s --help: exit %d\n%s", action, code, errs)
		}
	}
	_, errs, _ := keysRun(t, "retire", "--help", "--config", cfg)
	if !strings.Contains(errs, "--confirm-unused") {
		t.Errorf("retire --help does not document --confirm-unused:\n%s", errs)
	}
}

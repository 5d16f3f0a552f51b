package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// phiproxyCmd runs the binary with args and returns its output and exit
// code.
func phiproxyCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(fixture.binary, args...)
	cmd.Env = append(os.Environ(), "PGPASSFILE="+fixture.pgpass)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// `phiproxy lockdown` as an operator runs it: through the admin API of a
// running instance, which reaches a second instance through the
// database; and without an admin API, straight to the database.
func TestLockdownCommand(t *testing.T) {
	f := phiFixture(t)
	adminPort, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tokenDir := t.TempDir()
	token := filepath.Join(tokenDir, "admin.token")
	if err := os.WriteFile(token, []byte("integration-lockdown-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startProxy(t, proxyOpts{extra: f.extra + fmt.Sprintf("admin: {listen: 127.0.0.1:%d, token_file: %s}\n", adminPort, token), catalogDB: phiDB})
	b := startPHIProxy(t)
	t.Cleanup(func() { phiproxyCmd(t, "lockdown", "off", "--reason", "test over", "--config", b.config) })
	dsnA := appDSN(a.addr(), phiDB)
	dsnB := appDSN(b.addr(), phiDB)
	if out, err := psql(t, dsnA, "-c", "INSERT INTO patients (id, name, ssn) VALUES (1, 'x', '123-45-6789')"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	if out, code := phiproxyCmd(t, "lockdown", "on", "--config", a.config); code != 2 || !strings.Contains(out, "reason") {
		t.Fatalf("lockdown on without a reason: exit %d\n%s", code, out)
	}
	out, code := phiproxyCmd(t, "lockdown", "on", "--reason", "suspected breach", "--config", a.config)
	if code != 0 || !strings.Contains(out, "lockdown ON") {
		t.Fatalf("lockdown on: exit %d\n%s", code, out)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		out, err := psql(t, dsnB, "-A", "-t", "-c", "SELECT ssn FROM patients WHERE id = 1")
		if err != nil && strings.Contains(out, "lockdown is on") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second instance still serves PHI: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := psql(t, dsnA, "-A", "-t", "-c", "SELECT name FROM patients WHERE id = 1"); err != nil || strings.TrimSpace(out) != "x" {
		t.Fatalf("non-PHI column under lockdown: %v\n%s", err, out)
	}
	out, code = phiproxyCmd(t, "lockdown", "status", "--config", a.config)
	if code != 0 || !strings.Contains(out, "suspected breach") || !strings.Contains(out, "admin API from") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}

	// No admin API on b's config: the command writes the database itself.
	out, code = phiproxyCmd(t, "lockdown", "off", "--reason", "contained", "--config", b.config)
	if code != 0 || !strings.Contains(out, "database   off") {
		t.Fatalf("lockdown off (direct): exit %d\n%s", code, out)
	}
	// a's state_dir still says on: the instance stays locked until its
	// own switch is off too.
	if out, err := psql(t, dsnA, "-A", "-t", "-c", "SELECT ssn FROM patients WHERE id = 1"); err == nil {
		t.Fatalf("a served PHI with its state_dir locked:\n%s", out)
	}
	if out, code := phiproxyCmd(t, "lockdown", "off", "--reason", "contained", "--config", a.config); code != 0 {
		t.Fatalf("lockdown off: exit %d\n%s", code, out)
	}
	deadline = time.Now().Add(2 * time.Second)
	for {
		out, err := psql(t, dsnB, "-A", "-t", "-c", "SELECT ssn FROM patients WHERE id = 1")
		if err == nil && strings.TrimSpace(out) == "123-45-6789" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PHI not served after lockdown off: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

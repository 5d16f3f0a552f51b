package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// What an operator does or meets, and how the real binary fails closed:
// lockdown switched on and off, a KEK that cannot be reached at start.

// `phiproxy lockdown` as an operator runs it: through the admin API of a
// running instance, which reaches a second instance through the
// database; and without an admin API, straight to the database.
func TestLockdownCommand(t *testing.T) {
	f := phiFixture(t)
	adminPort, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	token := tempFile(t, "admin.token", "integration-lockdown-token\n")
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
	eventually(t, 2*time.Second, func() string {
		out, err := psql(t, dsnB, "-A", "-t", "-c", "SELECT ssn FROM patients WHERE id = 1")
		if err != nil && strings.Contains(out, "lockdown is on") {
			return ""
		}
		return fmt.Sprintf("the second instance still serves PHI: %v\n%s", err, out)
	})
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
	eventually(t, 2*time.Second, func() string {
		out, err := psql(t, dsnB, "-A", "-t", "-c", "SELECT ssn FROM patients WHERE id = 1")
		if err == nil && strings.TrimSpace(out) == "123-45-6789" {
			return ""
		}
		return fmt.Sprintf("PHI not served after lockdown off: %v\n%s", err, out)
	})
}

// A KEK in Vault that cannot be reached at start: phiproxy serves
// nothing rather than PHI unencrypted — serve exits with an error that
// names the KEK (exit 1 or 2), never listening.
func TestVaultDownAtStart(t *testing.T) {
	f := phiFixture(t)
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	closed, err := pgcluster.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	keysLine := strings.SplitN(f.extra, "\n", 2)
	phi := keysLine[1]
	keysDir := strings.TrimSpace(strings.TrimSuffix(strings.SplitN(strings.SplitN(keysLine[0], "dir: ", 2)[1], ",", 2)[0], ","))
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
upstream: {address: %s, sslmode: disable}
catalog_dsn: postgres://%s@%s/%s?sslmode=disable
keys: {dir: %s, kek: "hcvault://127.0.0.1:%d/transit/keys/phiproxy"}
%s`, port, fixture.cluster.Addr(), fixture.cluster.SuperUser, fixture.cluster.Addr(), phiDB, keysDir, closed, phi)
	t.Setenv("VAULT_TOKEN", "test-token")
	out, code := phiproxyCmd(t, "serve", "--config", tempFile(t, "phiproxy.yaml", cfg))
	if code == 0 || !strings.Contains(out, "hcvault://127.0.0.1") {
		t.Fatalf("serve with Vault down: exit %d\n%s", code, out)
	}
	t.Logf("serve: %s", out)
	if strings.Contains(out, `"msg":"listening"`) {
		t.Fatalf("serve listened with its KEK unreachable:\n%s", out)
	}
}

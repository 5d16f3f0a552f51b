package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/pgcluster"
)

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
	dir := t.TempDir()
	keysLine := strings.SplitN(f.extra, "\n", 2)
	phi := keysLine[1]
	keysDir := strings.TrimSpace(strings.TrimSuffix(strings.SplitN(strings.SplitN(keysLine[0], "dir: ", 2)[1], ",", 2)[0], ","))
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
upstream: {address: %s, sslmode: disable}
catalog_dsn: postgres://%s@%s/%s?sslmode=disable
keys: {dir: %s, kek: "hcvault://127.0.0.1:%d/transit/keys/phiproxy"}
%s`, port, fixture.cluster.Addr(), fixture.cluster.SuperUser, fixture.cluster.Addr(), phiDB, keysDir, closed, phi)
	path := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fixture.binary, "serve", "--config", path)
	cmd.Env = append(os.Environ(), "PGPASSFILE="+fixture.pgpass, "VAULT_TOKEN=test-token")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() == 0 || !strings.Contains(string(out), "hcvault://127.0.0.1") {
		t.Fatalf("serve with Vault down: %v\n%s", err, out)
	}
	t.Logf("serve: %s", out)
	if strings.Contains(string(out), `"msg":"listening"`) {
		t.Fatalf("serve listened with its KEK unreachable:\n%s", out)
	}
}

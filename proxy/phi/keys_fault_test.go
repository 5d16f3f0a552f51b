package phi

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

// Issue 18, item 14: the KEK or a keyset unavailable at start or on
// reload. At start the PHI layer does not come up (a clear error naming
// the keys; nothing is served unencrypted); a reload that cannot read
// them fails and the previous keys stay in use.
func TestKeysUnavailableAtStartAndReload(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7801, "keys-fault")

	noKEK := *testCfg
	noKEK.Keys.KEK = "file:" + filepath.Join(t.TempDir(), "missing-kek.json")
	noKeysets := *testCfg
	noKeysets.Keys.Dir = t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  *config.Config
	}{
		{"KEK file gone", &noKEK},
		{"keyset directory empty", &noKeysets},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), "keys") {
				t.Fatalf("start: %v, want an error naming the keys", err)
			}
			if err := p.phi.Reload(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), "keys") {
				t.Fatalf("reload: %v, want an error naming the keys", err)
			}
			// The previous keys stay: reads and writes go on.
			var ssn string
			if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 7801).Scan(&ssn); err != nil || ssn != "keys-fault" {
				t.Fatalf("after the failed reload: %q, %v", ssn, err)
			}
			stillWorks(t, ctx, connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol))
		})
	}
}

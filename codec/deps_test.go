package codec

import (
	"testing"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// TestPure asserts that codec stays a pure leaf that commands other than
// the proxy (encrypt, reencrypt) can use: it reaches none of the packages
// that hold sockets, keys, plans or the audit trail. (pgtype reaches net
// for its inet types: only our packages are checked. config reaches
// policy, which is pure too: policy/deps_test.go.)
func TestPure(t *testing.T) {
	deps := testenv.Deps(t)
	if !deps["github.com/jackc/pgx/v5/pgtype"] {
		t.Fatalf("go list -deps output looks wrong: %v", deps)
	}
	for _, f := range []string{"github.com/phiproxy/phiproxy/proxy", "github.com/phiproxy/phiproxy/crypto",
		"github.com/phiproxy/phiproxy/rewrite", "github.com/phiproxy/phiproxy/audit",
		"github.com/phiproxy/phiproxy/column", "github.com/phiproxy/phiproxy/proxy/phi"} {
		if deps[f] {
			t.Errorf("codec depends on %s; it must stay pure", f)
		}
	}
}

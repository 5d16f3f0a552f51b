package codec

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPure asserts that codec stays a pure leaf that commands other than
// the proxy (encrypt, reencrypt) can use: it reaches none of the packages
// that hold sockets, keys, plans or the audit trail.
func TestPure(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		deps[d] = true
	}
	if !deps["github.com/jackc/pgx/v5/pgtype"] {
		t.Fatalf("go list -deps output looks wrong:\n%s", out)
	}
	// (pgtype reaches net for its inet types: only our packages are checked.)
	for _, f := range []string{"github.com/phiproxy/phiproxy/proxy", "github.com/phiproxy/phiproxy/crypto",
		"github.com/phiproxy/phiproxy/rewrite", "github.com/phiproxy/phiproxy/audit",
		"github.com/phiproxy/phiproxy/policy"} {
		if deps[f] {
			t.Errorf("codec depends on %s; it must stay pure", f)
		}
	}
}

package rewrite

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// TestPure asserts that rewrite stays a pure package: nothing in its
// dependency closure opens sockets or runs programs, and it imports none of
// the packages that hold keys, sockets or the audit trail.
func TestPure(t *testing.T) {
	forbidden := []string{"net", "net/http", "os/exec", "os/signal", "crypto/tls", "syscall/js",
		"github.com/phiproxy/phiproxy/proxy", "github.com/phiproxy/phiproxy/crypto",
		"github.com/phiproxy/phiproxy/audit", "github.com/phiproxy/phiproxy/config",
		"github.com/phiproxy/phiproxy/policy"}
	deps := testenv.Deps(t)
	if !deps["github.com/pganalyze/pg_query_go/v5"] {
		t.Fatalf("go list -deps output looks wrong: %v", deps)
	}
	for _, f := range forbidden {
		if deps[f] {
			t.Errorf("rewrite depends on %s; it must stay pure", f)
		}
	}
	// Direct imports: no file system, clock or randomness either.
	out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, imp := range strings.Fields(string(out)) {
		switch imp {
		case "os", "time", "math/rand", "math/rand/v2", "crypto/rand", "io/ioutil":
			t.Errorf("rewrite imports %s directly; it must stay pure", imp)
		}
	}
}

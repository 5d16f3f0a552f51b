package policy

import (
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// TestPure: policy decides from the facts it is given — no sockets, no
// files, no database, no clock of its own, nothing else of ours — so that
// config, codec and every command can use it. The lockdown switch's
// storage lives in proxy/phi.
func TestPure(t *testing.T) {
	for d := range testenv.Deps(t) {
		if d != "github.com/phiproxy/phiproxy/policy" && strings.HasPrefix(d, "github.com/") || d == "net" || d == "database/sql" || d == "os/exec" {
			t.Errorf("policy depends on %s; it must stay pure", d)
		}
	}
}

package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// Deps returns the packages the package in the current directory depends
// on (go list -deps, its own files only), for tests that keep a package
// pure. It fails t when go list does.
func Deps(t testing.TB) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		deps[d] = true
	}
	return deps
}

package proxy

import "testing"

// isFatalError and errorCode read ErrorResponse bodies the upstream sent:
// the first severity or code field counts, and a field that is not
// NUL-terminated makes the body malformed.
func TestErrorBodyFields(t *testing.T) {
	for _, c := range []struct {
		body  string
		fatal bool
		code  string
	}{
		{"SFATAL\x00C28P01\x00Mno\x00\x00", true, "28P01"},
		{"VPANIC\x00SPANIC\x00CXX000\x00\x00", true, "XX000"},
		{"SERROR\x00VFATAL\x00C42P01\x00\x00", false, "42P01"},
		{"C23505\x00SFATAL\x00\x00", true, "23505"},
		{"Mno code\x00\x00", false, "XX000"},
		{"Cnot-a-code\x00\x00", false, "XX000"},
		{"Mno terminator", false, "08P01"},
		{"C42P01\x00SFATAL", false, "42P01"},
		{"", false, "XX000"},
	} {
		if got := isFatalError([]byte(c.body)); got != c.fatal {
			t.Errorf("isFatalError(%q) = %v, want %v", c.body, got, c.fatal)
		}
		if got := errorCode([]byte(c.body)); got.String() != c.code {
			t.Errorf("errorCode(%q) = %s, want %s", c.body, got, c.code)
		}
	}
}

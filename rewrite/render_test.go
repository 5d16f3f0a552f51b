package rewrite

import (
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/pgerr"
)

// renderShipped renders plan with the Renderer the proxy sends from, as a
// whole and as every statement prefix that a refusal in a Query sends
// (proxy/phi refuseAt), with fakeCiphertext in the slots. Each prefix must
// be the start of the whole.
func renderShipped(t testing.TB, plan *Plan) string {
	t.Helper()
	var r Renderer
	var buf []byte
	full, _, err := r.Text(&buf, plan.SQL, plan.Statements, len(plan.Statements), fakeFill)
	if err != nil {
		t.Fatal(err)
	}
	for n := range plan.Statements {
		pre, _, err := r.Text(&buf, plan.SQL, plan.Statements, n, fakeFill)
		if err != nil {
			t.Fatalf("rendering the first %d statements of %q: %v", n, plan.SQL, err)
		}
		if !strings.HasPrefix(full, pre) {
			t.Fatalf("the first %d statements of %q render as %q, not a prefix of %q", n, plan.SQL, pre, full)
		}
	}
	return full
}

func fakeFill(dst []byte, s *Slot) ([]byte, error) {
	v, err := fakeCiphertext(*s)
	return append(dst, v...), err
}

func TestRendererPrefixAndSpacing(t *testing.T) {
	sql := "SELECT 1 FROM t WHERE a = 'x'AND b = 2; UPDATE t SET a = 'y'; SELECT 3"
	stmts := []*Statement{
		{Offset: 0, Length: 39, Slots: []Slot{{Offset: 26, Length: 3, Text: "x"}}, Edits: []Edit{{Offset: 14, Length: 1, Text: "public.t"}}},
		{Offset: 40, Length: 20, Slots: []Slot{{Offset: 57, Length: 3, Text: "y"}}},
		{Offset: 62, Length: 8},
	}
	var r Renderer
	var buf []byte
	want := []string{
		"",
		"SELECT 1 FROM public.t WHERE a = '\\x5048011'::bytea AND b = 2; ",
		"SELECT 1 FROM public.t WHERE a = '\\x5048011'::bytea AND b = 2; UPDATE t SET a = '\\x5048011'::bytea; ",
		"SELECT 1 FROM public.t WHERE a = '\\x5048011'::bytea AND b = 2; UPDATE t SET a = '\\x5048011'::bytea; SELECT 3",
	}
	for n, w := range want {
		got, _, err := r.Text(&buf, sql, stmts, n, fakeFill)
		if err != nil || got != w {
			t.Errorf("n=%d: got %q, %v; want %q", n, got, err, w)
		}
	}
}

func TestRendererRefusesOverlapAndOverrun(t *testing.T) {
	sql := "SELECT 'a'; SELECT 'b'"
	for _, tc := range []struct {
		name  string
		stmts []*Statement
		n     int
		bad   int
	}{
		{"overlapping slots", []*Statement{{Offset: 0, Length: 10}, {Offset: 12, Length: 10, Slots: []Slot{{Offset: 19, Length: 3}, {Offset: 20, Length: 2}}}}, 2, 1},
		{"a slot past the rendered end", []*Statement{{Offset: 0, Length: 10, Slots: []Slot{{Offset: 7, Length: 8}}}, {Offset: 12, Length: 10}}, 1, 0},
	} {
		var r Renderer
		dst := []byte("keep")
		got, bad, err := r.Append(dst, sql, tc.stmts, tc.n, fakeFill)
		if pgerr.As(err) == nil || pgerr.As(err).Code != pgerr.FeatureNotSupported || bad != tc.bad || string(got) != "keep" {
			t.Errorf("%s: got %q, statement %d, %v; want 0A000 at statement %d and dst unchanged", tc.name, got, bad, err, tc.bad)
		}
	}
}

// TestRendererAllocs: once warm, rendering into a caller's buffer
// allocates nothing (the proxy's rewritten Query path).
func TestRendererAllocs(t *testing.T) {
	sql := "UPDATE t SET a = 'x', b = 'y' WHERE c = 'z'"
	stmts := []*Statement{{Offset: 0, Length: len(sql), Slots: []Slot{{Offset: 17, Length: 3}, {Offset: 26, Length: 3}, {Offset: 40, Length: 3}}}}
	fill := func(dst []byte, s *Slot) ([]byte, error) { return append(dst, `'\x00'::bytea`...), nil }
	var r Renderer
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() {
		buf, _, _ = r.Append(buf[:0], sql, stmts, 1, fill)
	}); n != 0 {
		t.Errorf("Renderer.Append: %v allocations per run, want 0", n)
	}
}

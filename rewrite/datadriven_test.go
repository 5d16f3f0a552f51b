package rewrite

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/phiproxy/phiproxy/pgerr"
)

func asPgErr(err error) *pgerr.Error { return pgerr.As(err) }

// TestDataDriven runs testdata/plan/*. Directives:
//
//	schema            replace the schema (input in the schema language)
//	plan [search_path=…] [user=…] [reset_path=…] [session_user=…] [temp=name,…]
//	                  plan the input SQL and print the plan or the refusal
//
// Regenerate expectations with -rewrite and review the diff.
func TestDataDriven(t *testing.T) {
	runPlanFiles(t, "testdata/plan/*", func(t *testing.T, d *datadriven.TestData, cols *Columns, cat *MemCatalog) string {
		if d.Cmd != "plan" {
			d.Fatalf(t, "unknown directive %s", d.Cmd)
		}
		p := NewPlanner(cols, cat, nil)
		pl, err := p.Plan(d.Input, sessionFromArgs(t, d))
		checkPlanInvariants(t, p, d.Input, pl, err)
		return describePlan(pl, err)
	})
}

// runPlanFiles runs each datadriven file glob names, starting on the
// standard schema: a schema directive replaces the schema (input in the
// schema language), every other directive is do's, given the schema in
// force.
func runPlanFiles(t *testing.T, glob string, do func(t *testing.T, d *datadriven.TestData, cols *Columns, cat *MemCatalog) string) {
	files, err := filepath.Glob(glob)
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cols, cat := loadSchema(t, standardSchema(t))
			datadriven.RunTest(t, f, func(t *testing.T, d *datadriven.TestData) string {
				if d.Cmd == "schema" {
					cols, cat = loadSchema(t, d.Input)
					return ""
				}
				return do(t, d, cols, cat)
			})
		})
	}
}

// checkPlanInvariants holds for every plan: slots lie inside their
// statement, do not overlap, the rendered text still parses and every
// reference to a PHI name in it is schema-qualified (checkPinned).
func checkPlanInvariants(t testing.TB, pl *Planner, sql string, p *Plan, err error) {
	t.Helper()
	if err != nil {
		pe := asPgErr(err)
		if pe == nil {
			t.Fatalf("error without SQLSTATE: %v", err)
		}
		if strings.Contains(pe.Message, "BUG") {
			// Typed input never reaches an internal error (issue 11).
			t.Fatalf("internal error for typed input %q: %v", sql, err)
		}
		return
	}
	for _, st := range p.Statements {
		if st.TouchesPHI && p.PassThrough {
			t.Fatalf("pass-through plan touches PHI: %q", sql)
		}
		last := -1
		for _, s := range st.Slots {
			if s.Offset < st.Offset || s.Offset+s.Length > st.Offset+st.Length || s.Offset < last {
				t.Fatalf("slot %+v outside statement or overlapping in %q", s, sql)
			}
			last = s.Offset + s.Length
		}
	}
	rendered := renderShipped(t, p)
	checkPinned(t, pl, sql, rendered)
}

func fakeCiphertext(s Slot) (string, error) {
	if s.Array {
		// What the proxy renders for an array literal.
		return fmt.Sprintf(`ARRAY[E'\\x504801%x'::bytea, NULL]::bytea[]`, len(s.Text)), nil
	}
	return fmt.Sprintf(`'\x504801%x'::bytea`, len(s.Text)), nil
}

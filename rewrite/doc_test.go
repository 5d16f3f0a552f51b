package rewrite

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

var docRow = regexp.MustCompile("^\\| (.+?) \\| (.+?) \\| `(.+)`( \\(search_path `([^`]+)`\\))? \\| (planned|pass-through|refused [0-9A-Z]{5}) \\|$")

// TestSQLSupportDoc checks docs/sql-support.md against the planner and the
// data-driven cases: each example must be a case in testdata/plan and give
// the result the page states.
func TestSQLSupportDoc(t *testing.T) {
	b, err := os.ReadFile("../docs/sql-support.md")
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string]bool{}
	for _, in := range corpusInputs(t) {
		inputs[in] = true
	}
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, nil)
	rows := 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| ") || strings.Count(line, "`") < 2 || !strings.HasSuffix(line, " |") {
			continue
		}
		m := docRow.FindStringSubmatch(line)
		if m == nil {
			if strings.Contains(line, "| planned |") || strings.Contains(line, "| refused") {
				t.Errorf("unreadable row in docs/sql-support.md: %s", line)
			}
			continue
		}
		rows++
		sql := strings.ReplaceAll(m[3], `\|`, "|")
		if !inputs[sql] {
			t.Errorf("docs/sql-support.md example is not a case in testdata/plan: %s", sql)
		}
		sess := Session{SearchPath: `"$user", public`, User: "app"}
		if m[5] != "" {
			sess.SearchPath = m[5]
		}
		plan, err := p.Plan(sql, sess)
		got := "planned"
		switch {
		case err != nil:
			got = "refused " + pgerrCode(err)
		case plan.PassThrough:
			got = "pass-through"
		}
		if got != m[6] {
			t.Errorf("docs/sql-support.md says %q gives %q, the planner gives %q", sql, m[6], got)
		}
	}
	if rows < 40 {
		t.Fatalf("only %d example rows found in docs/sql-support.md", rows)
	}
}

func pgerrCode(err error) string {
	if pe := asPgErr(err); pe != nil {
		return pe.Code.String()
	}
	return "none"
}

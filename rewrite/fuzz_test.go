package rewrite

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/phiproxy/phiproxy/pgerr"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzPlan from the data-driven cases")

// regressionStyle are statements in the style of PostgreSQL's regression
// suite, to seed the fuzzer with syntax the data-driven cases do not use.
var regressionStyle = []string{
	"SELECT * FROM patients p WHERE p.id IN (SELECT id FROM visits) ORDER BY 1 DESC NULLS LAST",
	"SELECT ssn FROM patients TABLESAMPLE SYSTEM (10) REPEATABLE (42)",
	"SELECT ssn FROM ONLY patients",
	"SELECT a.ssn FROM patients a NATURAL JOIN archive.patients b",
	"SELECT ssn FROM patients WHERE ssn = ALL($1)",
	"SELECT count(*) FILTER (WHERE ssn IS NULL) FROM patients",
	"SELECT * FROM (VALUES (1, 'a')) v(id, ssn) JOIN patients USING (id)",
	"INSERT INTO patients (id, ssn) VALUES (1, U&'\\0031')",
	"SELECT ssn FROM patients WHERE ssn = X'1F'",
	"WITH t AS MATERIALIZED (SELECT * FROM patients) SELECT * FROM t",
	"SELECT ssn FROM patients GROUP BY ROLLUP (ssn)",
	"SELECT ssn FROM patients WHERE ssn = 'a' COLLATE \"C\"",
	"SELECT xmlelement(name p, ssn) FROM patients",
	"SELECT ssn FROM patients FETCH FIRST 3 ROWS WITH TIES",
	"UPDATE patients SET ssn = DEFAULT WHERE CURRENT OF c",
	"SELECT 'patients'::regclass",
	"SELECT * FROM \"Patients\"",
	"select ssn from pAtIeNtS where ssn in ($1, $2) and mrn = any($3)",
	"INSERT INTO patients DEFAULT VALUES RETURNING ssn",
	"SELECT * FROM patients JOIN LATERAL (SELECT ssn) x ON true",
	"SELECT * FROM ROWS FROM (generate_series(1,2), generate_series(1,3)) AS t(a, b), patients",
}

func corpusInputs(t testing.TB) []string {
	var out []string
	files, _ := filepath.Glob("testdata/plan/*")
	for _, f := range files {
		datadriven.RunTestFromString(t.(*testing.T), mustRead(t, f), func(t *testing.T, d *datadriven.TestData) string {
			if d.Cmd == "plan" {
				out = append(out, d.Input)
			}
			return d.Expected
		})
	}
	return append(out, regressionStyle...)
}

func mustRead(t testing.TB, f string) string {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestUpdateCorpus writes the committed seed corpus when run with
// -update-corpus.
func TestUpdateCorpus(t *testing.T) {
	writeCorpus(t, "FuzzPlan", func(_ int, s string) string {
		return fmt.Sprintf("go test fuzz v1\nstring(%q)\n", s)
	})
}

// writeCorpus writes, with -update-corpus, one seed file of
// testdata/fuzz/<target> per corpusInputs entry, its body made by body.
func writeCorpus(t *testing.T, target string, body func(i int, s string) string) {
	if !*updateCorpus {
		return
	}
	dir := filepath.Join("testdata/fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range corpusInputs(t) {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%03d", i)), []byte(body(i, s)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzPlan checks, for any text:
//   - planning never panics, and every error carries a SQLSTATE;
//   - fail closed: a parsed statement whose tree names a PHI relation is
//     refused, or reports that relation as touched;
//   - rendering gives text that still parses;
//   - pinning: in the rendered text, every reference to a PHI name is
//     schema-qualified (checkPinned);
//   - never twice, never raw: planning rendered text that holds ciphertext
//     literals is refused (a value cast to bytea bound for a PHI column);
//     rendered text without them plans to no encryption slot.
func FuzzPlan(f *testing.F) {
	cols, cat := loadSchema(f, standardSchema(f))
	p := NewPlanner(cols, cat, nil)
	for _, s := range regressionStyle {
		f.Add(s)
	}
	sess := Session{SearchPath: `"$user", public`, User: "app"}
	f.Fuzz(func(t *testing.T, sql string) {
		plan, err := p.Plan(sql, sess)
		checkPlanInvariants(t, p, sql, plan, err)
		if err != nil {
			return
		}
		tree, perr := pg.Parse(sql)
		if perr != nil {
			if plan.PassThrough && p.MentionsPHI(sql) {
				t.Fatalf("unparseable text naming PHI passed through: %q", sql)
			}
			return
		}
		for i, raw := range tree.Stmts {
			if !dataStatement(raw.Stmt) {
				continue
			}
			for _, rel := range phiRelationsIn(raw.Stmt, cols) {
				if i >= len(plan.Statements) || !contains(plan.Statements[i].Relations, rel) {
					t.Fatalf("fail-open: statement %d of %q names PHI relation %s but the plan does not touch it", i+1, sql, rel)
				}
			}
		}
		rendered := renderShipped(t, plan)
		if _, err := pg.Parse(rendered); err != nil {
			t.Fatalf("rendered text does not parse: %q → %q: %v", sql, rendered, err)
		}
		// Rendered text is sent upstream and never planned again (the
		// proxy plans only what a client sent). Were it fed back, every
		// ciphertext literal in it is a value cast to bytea bound for a PHI
		// column, which is refused: it can be neither encrypted twice nor
		// stored as given.
		rewritten := 0
		for _, st := range plan.Statements {
			rewritten += len(st.Slots) + len(st.Edits)
		}
		again, err := p.Plan(rendered, sess)
		switch {
		case err != nil && rewritten == 0:
			t.Fatalf("planning rendered text failed: %q → %q: %v", sql, rendered, err)
		case err != nil && pgerr.As(err).Code != pgerr.FeatureNotSupported:
			t.Fatalf("rendered ciphertext planned again: want 0A000, got %v", err)
		case err == nil:
			for _, st := range again.Statements {
				if len(st.Slots) > 0 {
					t.Fatalf("second rewrite adds an encryption slot: %q → %q", sql, rendered)
				}
			}
		}
		if err == nil && rewritten > 0 {
			for _, st := range plan.Statements {
				if len(st.Slots) > 0 {
					t.Fatalf("rendered ciphertext accepted as a value when planned again: %q → %q", sql, rendered)
				}
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func dataStatement(n *pg.Node) bool {
	switch n.Node.(type) {
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt,
		*pg.Node_CopyStmt, *pg.Node_ExplainStmt, *pg.Node_PrepareStmt, *pg.Node_TruncateStmt:
		return true
	}
	return false
}

// phiRelationsIn lists the PHI relations (resolved with the test
// search_path, public) named by RangeVars anywhere in the tree, except
// names shadowed by a CTE of the same name, FOR UPDATE OF names and the
// table SELECT … INTO creates.
func phiRelationsIn(n *pg.Node, cols *Columns) []string {
	ctes := map[string]bool{}
	var rels []string
	collecting := true // first pass: CTE names (a FROM may come before its WITH in the walk)
	walk := func(m protoreflect.Message) bool {
		switch x := m.Interface().(type) {
		case *pg.CommonTableExpr:
			ctes[x.Ctename] = true
		case *pg.LockingClause:
			return false // FOR UPDATE OF names FROM items, not relations
		case *pg.IntoClause:
			return false // SELECT … INTO names the table it creates
		case *pg.RangeVar:
			if collecting {
				break
			}
			schema := x.Schemaname
			if schema == "" {
				schema = "public"
			}
			if cols.hasRelation(schema, x.Relname) && !(x.Schemaname == "" && ctes[x.Relname]) {
				rels = append(rels, schema+"."+x.Relname)
			}
		}
		return true
	}
	walkTree(n.ProtoReflect(), walk)
	collecting = false
	walkTree(n.ProtoReflect(), walk)
	return rels
}

// TestCorpusProperties runs the fuzz properties over every data-driven
// input, so that plain go test checks them too.
func TestCorpusProperties(t *testing.T) {
	inputs := corpusInputs(t)
	if len(inputs) < 150 {
		t.Fatalf("only %d data-driven cases; the issue asks for at least 150", len(inputs))
	}
	if !strings.Contains(strings.Join(inputs, "\n"), "patients") {
		t.Fatal("corpus lost its PHI cases")
	}
}

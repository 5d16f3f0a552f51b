package rewrite

import (
	"reflect"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pg "github.com/pganalyze/pg_query_go/v5"
)

const (
	testOverlaySchema = "phiproxy_overlay"
	testOverlayDB     = "clinic"
)

// TestOverlayDataDriven runs testdata/overlay/* with the catalog overlay
// on (directives as in TestDataDriven; plan-off plans without it).
func TestOverlayDataDriven(t *testing.T) {
	runPlanFiles(t, "testdata/overlay/*", func(t *testing.T, d *datadriven.TestData, cols *Columns, cat *MemCatalog) string {
		var opts []PlannerOption
		switch d.Cmd {
		case "plan":
			opts = append(opts, WithCatalogOverlay(testOverlaySchema, testOverlayDB))
		case "plan-off":
		default:
			d.Fatalf(t, "unknown directive %s", d.Cmd)
		}
		p := NewPlanner(cols, cat, nil, opts...)
		sess := sessionFromArgs(t, d)
		if sess.Database == "" {
			sess.Database = testOverlayDB
		}
		pl, err := p.Plan(d.Input, sess)
		checkPlanInvariants(t, p, d.Input, pl, err)
		return describePlan(pl, err)
	})
}

// With the overlay on, text that names neither pg_attribute nor
// information_schema (nor PHI) still passes the pre-check without parsing
// and without allocating; text that names one is planned.
func TestOverlayPrecheck(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, nil, WithCatalogOverlay(testOverlaySchema, testOverlayDB))
	plain := "SELECT c.relname, t.typname FROM pg_catalog.pg_class c JOIN pg_type t ON t.oid = c.reltype WHERE c.relname = 'doctors'"
	if allocs := testing.AllocsPerRun(100, func() {
		if h, np := p.ix.scan(plain); h != 0 || np {
			t.Fatalf("scan(%q) = %d, %v", plain, h, np)
		}
	}); allocs != 0 {
		t.Errorf("pre-check allocates %v times", allocs)
	}
	for _, sql := range []string{
		"select attname from PG_ATTRIBUTE",
		`select * from "information_schema".columns`,
		"select 1 /* pg_attribute */",
	} {
		if h, _ := p.ix.scan(sql); h != wordCatalog {
			t.Errorf("scan(%q) = %d, want the catalog word only", sql, h)
		}
		if p.MentionsPHI(sql) {
			t.Errorf("MentionsPHI(%q) = true", sql)
		}
	}
	off := NewPlanner(cols, cat, nil)
	if h, _ := off.ix.scan("select attname from pg_attribute"); h != 0 {
		t.Errorf("overlay off: pg_attribute is a word of the index")
	}
}

// The definition of information_schema.columns as PostgreSQL 15 prints it
// (shortened to its FROM clause's shape): each pg_attribute read becomes
// the overlay function, nothing else changes.
func TestOverlayColumnsView(t *testing.T) {
	def := ` SELECT (a.attname)::information_schema.sql_identifier AS column_name,
    (information_schema._pg_char_max_length(information_schema._pg_truetypid(a.*, t.*), information_schema._pg_truetypmod(a.*, t.*)))::information_schema.cardinal_number AS character_maximum_length
   FROM ((pg_attribute a
     LEFT JOIN pg_attrdef ad ON (((a.attrelid = ad.adrelid) AND (a.attnum = ad.adnum))))
     JOIN (pg_type t
     JOIN pg_namespace nt ON ((t.typnamespace = nt.oid))) ON ((a.atttypid = t.oid)))
  WHERE ((a.attnum > 0) AND (NOT a.attisdropped));`
	got, ok := OverlayColumnsView(def, `"phiproxy_overlay"."attributes"()`)
	if !ok {
		t.Fatal("not rewritten")
	}
	want := strings.Replace(strings.TrimSuffix(strings.TrimSpace(def), ";"), "((pg_attribute a", `(("phiproxy_overlay"."attributes"() a`, 1)
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []string{"SELECT 1", "SELECT * FROM pg_catalog.pg_class", "DELETE FROM pg_attribute", "SELECT * FROM x.pg_attribute"} {
		if s, ok := OverlayColumnsView(bad, "f()"); ok {
			t.Errorf("OverlayColumnsView(%q) = %q, want failure", bad, s)
		}
	}
}

// FuzzOverlay: turning the overlay on changes no refusal, no slot, no
// result and no other edit; its own edits each replace exactly a name of
// pg_attribute or information_schema.columns (or the qualifier of a column
// reference) with the overlay's view, and the text still parses.
func FuzzOverlay(f *testing.F) {
	cols, cat := loadSchema(f, standardSchema(f))
	on := NewPlanner(cols, cat, nil, WithCatalogOverlay(testOverlaySchema, testOverlayDB))
	off := NewPlanner(cols, cat, nil)
	for _, s := range []string{
		"SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = '\"patients\"'::regclass",
		"select * from information_schema.columns where table_name = 'patients'",
		"SELECT pg_catalog.pg_attribute.attname FROM pg_catalog.pg_attribute",
		"SELECT p.ssn, a.attname FROM patients p JOIN pg_catalog . pg_attribute a ON a.attrelid = 'patients'::regclass",
		"WITH pg_attribute AS (SELECT 1) SELECT * FROM pg_attribute, information_schema.columns c",
		"DECLARE c CURSOR FOR SELECT * FROM \"pg_catalog\".\"pg_attribute\"; FETCH 1 FROM c",
		"SET search_path = s, pg_catalog; SELECT * FROM pg_attribute",
	} {
		f.Add(s)
	}
	sess := Session{SearchPath: `"$user", public`, User: "app", Database: testOverlayDB}
	f.Fuzz(func(t *testing.T, sql string) {
		pOn, errOn := on.Plan(sql, sess)
		pOff, errOff := off.Plan(sql, sess)
		checkPlanInvariants(t, on, sql, pOn, errOn)
		if (errOn == nil) != (errOff == nil) || errOn != nil && errOn.Error() != errOff.Error() {
			t.Fatalf("%q: with the overlay %v, without %v", sql, errOn, errOff)
		}
		if errOn != nil {
			return
		}
		if len(pOff.Statements) > 0 && len(pOn.Statements) != len(pOff.Statements) {
			t.Fatalf("%q: %d statements with the overlay, %d without", sql, len(pOn.Statements), len(pOff.Statements))
		}
		for i, a := range pOn.Statements {
			b := &Statement{} // without the overlay, not parsed at all
			if len(pOff.Statements) > 0 {
				b = pOff.Statements[i]
			}
			if !reflect.DeepEqual(a.Slots, b.Slots) || !reflect.DeepEqual(a.Results, b.Results) || !reflect.DeepEqual(a.Params, b.Params) || a.TouchesPHI != b.TouchesPHI {
				t.Fatalf("%q: statement %d planned differently with the overlay", sql, i+1)
			}
			var own []Edit
			for _, e := range a.Edits {
				if strings.HasPrefix(e.Text, `"`+testOverlaySchema+`".`) {
					own = append(own, e)
					name := strings.ToLower(strings.ReplaceAll(sql[e.Offset:e.Offset+e.Length], `"`, ""))
					if !strings.HasSuffix(name, "pg_attribute") && !strings.HasSuffix(name, "columns") {
						t.Fatalf("%q: overlay edit replaces %q", sql, sql[e.Offset:e.Offset+e.Length])
					}
				}
			}
			if len(a.Edits)-len(own) != len(b.Edits) {
				t.Fatalf("%q: statement %d has %d other edits with the overlay, %d without", sql, i+1, len(a.Edits)-len(own), len(b.Edits))
			}
		}
		if rendered := renderShipped(t, pOn); rendered != sql {
			if _, err := pg.Parse(rendered); err != nil {
				t.Fatalf("rendered text does not parse: %q → %q: %v", sql, rendered, err)
			}
		}
	})
}

// BenchmarkPassThroughOverlay is BenchmarkPassThrough with the overlay on:
// ordinary text still costs the pre-check only.
func BenchmarkPassThroughOverlay(b *testing.B) {
	cols, cat := loadSchema(b, standardSchema(b))
	p := NewPlanner(cols, cat, nil, WithCatalogOverlay(testOverlaySchema, testOverlayDB))
	b.ReportAllocs()
	for b.Loop() {
		if h, np := p.ix.scan(benchPassThrough); h != 0 || np {
			b.Fatal("pass-through statement is parsed")
		}
	}
}

package rewrite

import (
	"fmt"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// newLiteralTexts are point selects that differ only in their literal, as
// a simple-protocol client sends them: more of them than the cache holds,
// so that every Plan misses the exact-text tier.
func newLiteralTexts() []string {
	out := make([]string, 1<<14)
	for i := range out {
		out[i] = fmt.Sprintf("SELECT id, name, ssn FROM patients WHERE ssn = '%03d-%02d-%04d'", i%1000, i%100, i)
	}
	return out
}

// BenchmarkNewLiteral plans a point select with a new literal each
// iteration: through the shape tier (exact miss, shape hit), with no cache
// (full plan), and the bare libpg_query parse for scale.
func BenchmarkNewLiteral(b *testing.B) {
	texts := newLiteralTexts()
	sess := Session{SearchPath: `"$user", public`, User: "app"}
	b.Run("ShapeHit", func(b *testing.B) {
		p := benchPlanner(b, NewCache(256))
		if _, err := p.Plan(texts[0], sess); err != nil {
			b.Fatal(err)
		}
		k := cacheKey{sql: texts[1], version: p.cat.Version(), sess: sess}
		if _, hit, err := p.planShaped(texts[1], sess, k); err != nil || !hit {
			b.Fatalf("no shape hit: %v", err)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			pl, err := p.Plan(texts[i%len(texts)], sess)
			if err != nil || len(pl.Statements[0].Slots) != 1 {
				b.Fatal(err)
			}
			sink = pl
			i++
		}
	})
	b.Run("FullPlan", func(b *testing.B) {
		p := benchPlanner(b, nil)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			pl, err := p.Plan(texts[i%len(texts)], sess)
			if err != nil {
				b.Fatal(err)
			}
			sink = pl
			i++
		}
	})
	b.Run("Parse", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			t, err := pg.Parse(texts[i%len(texts)])
			if err != nil {
				b.Fatal(err)
			}
			sink = t
			i++
		}
	})
}

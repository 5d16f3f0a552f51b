package rewrite

import (
	"fmt"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

const (
	benchPointSelect = "SELECT id, name, ssn FROM patients WHERE ssn = $1"
	benchJoin3       = "SELECT p.name, p.ssn, v.visited_at, d.name FROM patients p JOIN visits v ON v.patient_ssn = p.ssn JOIN doctors d ON d.id = v.doctor_id WHERE p.ssn = '123-45-6789' AND v.visited_at > now() - interval '1 year'"
	benchPassThrough = "SELECT id, name FROM doctors WHERE npi = $1 ORDER BY name LIMIT 20"
)

func benchInsert10() string {
	var rows []string
	for i := 0; i < 10; i++ {
		rows = append(rows, fmt.Sprintf("(%d, 'Patient %d', '%03d-45-6789', 'flu', '1980-01-%02d')", i, i, i, i+1))
	}
	return "INSERT INTO patients (id, name, ssn, diagnosis, dob) VALUES " + strings.Join(rows, ", ")
}

func benchPlanner(b *testing.B, cache *Cache) *Planner {
	cols, cat := loadSchema(b, standardSchema(b))
	return NewPlanner(cols, cat, cache)
}

var sink any

// The bare parse runs in the same benchmark binary, so the ratio
// plan/parse is measured within one run.
func BenchmarkParse(b *testing.B) {
	for _, c := range []struct{ name, sql string }{
		{"PointSelect", benchPointSelect}, {"Join3", benchJoin3}, {"Insert10", benchInsert10()},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				t, err := pg.Parse(c.sql)
				if err != nil {
					b.Fatal(err)
				}
				sink = t
			}
		})
	}
}

func BenchmarkPlanUncached(b *testing.B) {
	p := benchPlanner(b, nil)
	sess := Session{SearchPath: `"$user", public`, User: "app"}
	for _, c := range []struct{ name, sql string }{
		{"PointSelect", benchPointSelect}, {"Join3", benchJoin3}, {"Insert10", benchInsert10()},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pl, err := p.Plan(c.sql, sess)
				if err != nil || pl.PassThrough {
					b.Fatal(err)
				}
				sink = pl
			}
		})
	}
}

// cachedPlanner is a planner with a cache that already holds benchJoin3's
// plan for the session it returns.
func cachedPlanner(b *testing.B) (*Planner, Session) {
	p := benchPlanner(b, NewCache(1024))
	sess := Session{SearchPath: `"$user", public`, User: "app"}
	if _, err := p.Plan(benchJoin3, sess); err != nil {
		b.Fatal(err)
	}
	return p, sess
}

func BenchmarkPlanCached(b *testing.B) {
	p, sess := cachedPlanner(b)
	b.ReportAllocs()
	for b.Loop() {
		pl, _ := p.Plan(benchJoin3, sess)
		sink = pl
	}
}

func BenchmarkPlanCachedParallel(b *testing.B) {
	p, sess := cachedPlanner(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = p.Plan(benchJoin3, sess)
		}
	})
}

// BenchmarkPassThrough is the hot path for statements that name no PHI
// relation: the lexical pre-check only.
func BenchmarkPassThrough(b *testing.B) {
	p := benchPlanner(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		if p.MentionsPHI(benchPassThrough) {
			b.Fatal("pass-through statement mentions PHI")
		}
	}
}

// BenchmarkAuditText is the one-time cost per cached plan of the
// normalized query and fingerprint the audit event carries.
func BenchmarkAuditText(b *testing.B) {
	for _, c := range []struct{ name, sql string }{{"PointSelect", benchPointSelect}, {"Join3", benchJoin3}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a := &auditText{text: c.sql}
				a.compute()
				sink = a
			}
		})
	}
}

package rewrite

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestCacheHitAllocatesNothing(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, NewCache(64))
	sess := Session{SearchPath: "public", User: "app"}
	first, err := p.Plan(benchPointSelect, sess)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		pl, _ := p.Plan(benchPointSelect, sess)
		if pl != first {
			t.Fatal("cache returned a different plan")
		}
	})
	if allocs != 0 {
		t.Fatalf("cached lookup allocates %v times", allocs)
	}
}

func TestCacheKeysOnSearchPathAndCatalogVersion(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	cache := NewCache(64)
	p := NewPlanner(cols, cat, cache)
	pub, _ := p.Plan("SELECT ssn FROM patients", Session{SearchPath: "public"})
	arch, _ := p.Plan("SELECT ssn FROM patients", Session{SearchPath: "archive"})
	if pub.Statements[0].Results[0].Column.Ident == arch.Statements[0].Results[0].Column.Ident {
		t.Fatal("search_path did not change the plan: the cache key misses it")
	}
	cols2, cat2 := loadSchema(t, standardSchema(t))
	cat2.Ver = 2
	p2 := NewPlanner(cols2, cat2, cache)
	again, _ := p2.Plan("SELECT ssn FROM patients", Session{SearchPath: "public"})
	if again == pub {
		t.Fatal("a new catalog version reused the old plan")
	}
}

func TestCacheCachesRefusals(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, NewCache(64))
	_, err1 := p.Plan("SELECT lower(ssn) FROM patients", Session{})
	_, err2 := p.Plan("SELECT lower(ssn) FROM patients", Session{})
	if err1 == nil || err1 != err2 {
		t.Fatalf("refusal not cached: %v, %v", err1, err2)
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := NewCache(cacheShards) // one entry per shard
	k := func(i int) cacheKey { return cacheKey{sql: fmt.Sprintf("SELECT %d", i)} }
	for i := 0; i < 1000; i++ {
		c.put(k(i), &Plan{}, nil)
	}
	if n := c.Len(); n > cacheShards {
		t.Fatalf("cache holds %d plans, bound is %d", n, cacheShards)
	}
	if _, ok := c.get(k(999)); !ok {
		t.Fatal("most recent plan evicted")
	}
}

func TestCacheConcurrentSessions(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, NewCache(32))
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				sql := fmt.Sprintf("SELECT ssn FROM patients WHERE id = %d", (i*7+g)%50)
				pl, err := p.Plan(sql, Session{SearchPath: "public"})
				if err != nil || len(pl.Statements[0].Results) != 1 {
					t.Errorf("plan %q: %v", sql, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestBindExecute(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, nil)
	prep, err := p.Plan("PREPARE find(text) AS SELECT name, dob FROM patients WHERE ssn = $1", Session{SearchPath: "public"})
	if err != nil {
		t.Fatal(err)
	}
	sql := "EXECUTE find('123-45-6789')"
	exec, err := p.Plan(sql, Session{SearchPath: "public"})
	if err != nil || exec.PassThrough {
		t.Fatalf("EXECUTE must not be pass-through: %v", err)
	}
	st, err := BindExecute(exec.Statements[0], prep.Statements[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Slots) != 1 || sql[st.Slots[0].Offset:st.Slots[0].Offset+st.Slots[0].Length] != "'123-45-6789'" || st.Slots[0].Text != "123-45-6789" {
		t.Fatalf("slots = %+v", st.Slots)
	}
	if len(st.Results) != 1 || st.Results[0].Column.Ident != "public.patients.dob" || st.Action != ActionRead || st.Normalized() == "" {
		t.Fatalf("bound statement = %+v", st)
	}
	bad, _ := p.Plan("EXECUTE find(upper('x'))", Session{SearchPath: "public"})
	if _, err := BindExecute(bad.Statements[0], prep.Statements[0]); err == nil {
		t.Fatal("an expression bound for a PHI parameter must be refused")
	}
}

// EXECUTE nested in EXPLAIN or CREATE TABLE AS sends its arguments like a
// bare one (issue 11 item 16): they must become slots.
func TestBindExecuteNested(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, nil)
	sess := Session{SearchPath: "public"}
	prep := func(sql string) *Statement {
		pl, err := p.Plan(sql, sess)
		if err != nil {
			t.Fatal(err)
		}
		return pl.Statements[0]
	}
	find := prep("PREPARE find(text) AS SELECT name, dob FROM patients WHERE ssn = $1")
	ids := prep("PREPARE ids(text) AS SELECT id FROM patients WHERE ssn = $1")
	ins := prep("PREPARE ins(text, text) AS INSERT INTO patients (name, ssn) VALUES ($1, $2)")
	for _, c := range []struct {
		name, sql string
		prepared  *Statement
		refused   bool
		explain   bool // Statement.Explain: nothing runs
		results   int
	}{
		{"EXPLAIN EXECUTE encrypts the argument and returns the plan, not rows", "EXPLAIN EXECUTE find('123-45-6789')", find, false, true, 0},
		{"EXPLAIN ANALYZE EXECUTE runs the statement", "EXPLAIN (ANALYZE, BUFFERS) EXECUTE find('123-45-6789')", find, false, false, 0},
		{"EXPLAIN ANALYZE EXECUTE of an INSERT writes ciphertext", "explain analyze execute ins('x', '123-45-6789')", ins, false, false, 0},
		{"CREATE TABLE AS EXECUTE of a statement returning PHI is refused", "CREATE TABLE copy AS EXECUTE find('123-45-6789')", find, true, false, 0},
		{"CREATE TABLE AS EXECUTE of a statement returning no PHI encrypts its argument", "CREATE TABLE copy AS EXECUTE ids('123-45-6789')", ids, false, false, 0},
		{"EXPLAIN ANALYZE CREATE TABLE AS EXECUTE is refused the same way", "EXPLAIN ANALYZE CREATE TABLE copy AS EXECUTE find('123-45-6789')", find, true, false, 0},
		{"a bare EXECUTE still returns the decrypted rows", "EXECUTE find('123-45-6789')", find, false, false, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			pl, err := p.Plan(c.sql, sess)
			if err != nil {
				t.Fatal(err)
			}
			exec := pl.Statements[0]
			if pl.PassThrough || exec.Execute == nil || exec.Effects&EffectExecute == 0 {
				t.Fatalf("not planned as an EXECUTE: pass-through=%v %+v", pl.PassThrough, exec)
			}
			st, err := BindExecute(exec, c.prepared)
			if c.refused {
				if pgerrCode(err) != "0A000" {
					t.Fatalf("err = %v, want a 0A000 refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Slots) == 0 || c.sql[st.Slots[len(st.Slots)-1].Offset:][:len("'123-45-6789'")] != "'123-45-6789'" {
				t.Fatalf("the PHI argument is not a slot: %+v", st.Slots)
			}
			if st.Explain != c.explain || len(st.Results) != c.results {
				t.Fatalf("explain=%v results=%v", st.Explain, st.Results)
			}
		})
	}
}

// Inlined values make every statement text new: the texts served from a
// shape template must not flood the cache and evict other plans.
func TestShapeHitsDoNotFloodTheCache(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	cache := NewCache(64)
	p := NewPlanner(cols, cat, cache)
	sess := Session{SearchPath: "public", User: "app"}
	keep := "SELECT name, ssn FROM patients WHERE ssn = $1"
	if _, err := p.Plan(keep, sess); err != nil {
		t.Fatal(err)
	}
	before := cache.Len()
	for i := 0; i < 1000; i++ {
		if _, err := p.Plan(fmt.Sprintf("SELECT name, ssn FROM patients WHERE ssn = '%d'", i), sess); err != nil {
			t.Fatal(err)
		}
	}
	// The first inlined text is planned in full (and cached with its
	// template); the other 999 are re-bound from the template.
	if got := cache.Len(); got > before+2 {
		t.Fatalf("cache grew from %d to %d entries for texts served by one template", before, got)
	}
	if e, ok := cache.get(cacheKey{sql: keep, version: cat.Version(), sess: sess}); !ok || e.plan == nil {
		t.Fatal("the parameterised plan was evicted by inlined-value texts")
	}
}

func TestCacheStatsCountLookups(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	cache := NewCache(64)
	p := NewPlanner(cols, cat, cache)
	sess := Session{SearchPath: "public"}
	for _, sql := range []string{
		"SELECT ssn FROM patients WHERE id = 1", // text miss, shape miss
		"SELECT ssn FROM patients WHERE id = 1", // text hit
		"SELECT ssn FROM patients WHERE id = 2", // text miss, shape hit
		"SELECT 1",                              // text miss, no PHI: no shape lookup
	} {
		if _, err := p.Plan(sql, sess); err != nil {
			t.Fatal(err)
		}
	}
	want := CacheStats{Hits: 1, Misses: 3, ShapeHits: 1, ShapeMisses: 1}
	if got := cache.Stats(); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// A second review filled a 4096-entry cache with 1000 distinct 1 MB
// pass-through statements: RSS went from 33 MB to 1.2 GB. Texts longer
// than the threshold are not cached, and what is cached stays under the
// byte bound.
func TestCacheIsBoundedByBytes(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	cache := NewCache(4096)
	p := NewPlanner(cols, cat, cache)
	body := strings.Repeat("x", 1<<20)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 1000; i++ {
		sql := fmt.Sprintf("SELECT %d, '%s'", i, body)
		if pl, err := p.Plan(sql, Session{}); err != nil || !pl.PassThrough {
			t.Fatalf("statement %d: %v", i, err)
		}
	}
	if n := cache.Len(); n != 0 {
		t.Errorf("cache holds %d statements of 1 MB, want none (threshold %d bytes)", n, DefaultCacheMaxText)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Errorf("heap grew by %d MB after 1000 distinct 1 MB statements", grew>>20)
	}

	// Texts under the threshold: the byte bound evicts before the count
	// bound does.
	small := NewCache(4096, CacheBytes(4<<20))
	p = NewPlanner(cols, cat, small)
	mid := strings.Repeat("y", 60<<10)
	for i := 0; i < 1000; i++ {
		p.Plan(fmt.Sprintf("SELECT %d, '%s'", i, mid), Session{})
		p.Plan(fmt.Sprintf("SELECT ssn FROM patients WHERE ssn = '%d' AND name = '%s'", i, mid[:30<<10]), Session{SearchPath: "public"})
	}
	if b := small.Bytes(); b > 4<<20 || b == 0 {
		t.Errorf("cache holds %d estimated bytes, bound %d", b, 4<<20)
	}
	if n := small.Len(); n >= 4096 || n == 0 {
		t.Errorf("cache holds %d entries", n)
	}
}

func TestCacheChargesEachEntryItsText(t *testing.T) {
	c := NewCache(64)
	c.put(cacheKey{sql: strings.Repeat("a", 10000)}, &Plan{SQL: strings.Repeat("a", 10000)}, nil)
	if b := c.Bytes(); b < 20000 {
		t.Fatalf("a 10 kB text with its plan is charged %d bytes", b)
	}
	c.put(cacheKey{sql: strings.Repeat("b", DefaultCacheMaxText+1)}, &Plan{}, nil)
	if n := c.Len(); n != 1 {
		t.Fatalf("a text over the threshold was cached (%d entries)", n)
	}
}

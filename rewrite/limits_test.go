package rewrite

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgerr"
)

// phiInsert is a multi-row INSERT into the PHI relation patients of at
// least n bytes; tag makes texts distinct.
func phiInsert(n int, tag string) string {
	var b strings.Builder
	b.WriteString("INSERT INTO patients (id, name, ssn, diagnosis) VALUES ")
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "(%d, 'name %s', '%09d', 'diagnosis %d')", i, tag, i, i)
	}
	return b.String()
}

// A second review saw one 10.9 MB PHI statement peak at 546 MB RSS
// (issue 18): planning costs ~40 bytes per byte of text. A PHI statement
// over the planning limit is refused before it is parsed.
func TestLongPHIStatementRefusedBeforeParsing(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	p := NewPlanner(cols, cat, NewCache(64))
	sql := phiInsert(DefaultMaxPHIText+1, "x")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := p.Plan(sql, Session{SearchPath: "public"})
	runtime.ReadMemStats(&after)
	e := pgerr.As(err)
	if e == nil || e.Code != pgerr.ProgramLimitExceeded {
		t.Fatalf("got %v, want 54000", err)
	}
	if !strings.Contains(e.Message, `"patients"`) || strings.Contains(e.Message, "diagnosis 1") || e.Hint == "" {
		t.Fatalf("refusal: %q (hint %q)", e.Message, e.Hint)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(len(sql)) {
		t.Errorf("refusing a %d-byte statement allocated %d bytes: it was parsed", len(sql), alloc)
	}
	// Under the limit it is planned; a shorter limit applies when set.
	short := phiInsert(200<<10, "y")
	if _, err := p.Plan(short, Session{SearchPath: "public"}); err != nil {
		t.Fatal(err)
	}
	p = NewPlanner(cols, cat, nil, WithMaxPHIText(100<<10))
	if _, err := p.Plan(short, Session{SearchPath: "public"}); pgerr.As(err) == nil || pgerr.As(err).Code != pgerr.ProgramLimitExceeded {
		t.Fatalf("WithMaxPHIText: %v", err)
	}
	// A pass-through text is not limited.
	if pl, err := p.Plan("SELECT '"+strings.Repeat("z", 300<<10)+"'", Session{}); err != nil || !pl.PassThrough {
		t.Fatalf("pass-through: %v", err)
	}
}

// Long texts are parsed within a byte budget shared by the sessions of a
// cache, so N sessions sending long PHI statements at once do not
// multiply the planning peak by N.
func TestLongTextsPlannedWithinSharedBudget(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	const budget = 300 << 10
	cache := NewCache(64, CacheLargePlanBytes(budget))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := NewPlanner(cols, cat, cache)
			for i := 0; i < 3; i++ {
				if _, err := p.Plan(phiInsert(200<<10, fmt.Sprint(g, i)), Session{SearchPath: "public"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cache.large.mu.Lock()
	peak, used := cache.large.peak, cache.large.used
	cache.large.mu.Unlock()
	if peak > budget || peak == 0 || used != 0 {
		t.Fatalf("budget %d: peak %d, still held %d", budget, peak, used)
	}
}

// A plan that plans a part of its own text (Sequelize's findOrCreate
// plans the INSERT inside its function body) takes from the budget of
// long texts once: the inner planning must not wait for the bytes the
// outer one holds.
func TestLongTextBudgetTakenOncePerStatement(t *testing.T) {
	cols, cat := loadSchema(t, standardSchema(t))
	long := strings.Repeat("x", 100<<10)
	const hex = "0123456789abcdef0123456789abcdef"
	sql := `CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response "patients", OUT sequelize_caught_exception text) RETURNS RECORD AS $func_` + hex + `$ BEGIN INSERT INTO "patients" ("id","name","ssn") VALUES (1,'` + long + `','111-22-3333') RETURNING * INTO response; EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS sequelize_caught_exception = PG_EXCEPTION_DETAIL; END $func_` + hex + `$ LANGUAGE plpgsql; SELECT (testfunc.response).*, testfunc.sequelize_caught_exception FROM pg_temp.testfunc(); DROP FUNCTION IF EXISTS pg_temp.testfunc();`
	p := NewPlanner(cols, cat, NewCache(64, CacheLargePlanBytes(150<<10)))
	done := make(chan error, 1)
	go func() {
		pl, err := p.Plan(sql, Session{SearchPath: "public"})
		if err == nil && len(pl.Statements[0].Slots) != 1 {
			err = fmt.Errorf("the INSERT in the body was not planned: %d slots", len(pl.Statements[0].Slots))
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("planning waits for the budget it holds itself")
	}
}

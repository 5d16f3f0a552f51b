package rewrite

import (
	"strconv"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

func TestNormalizeSQL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`SELECT ssn FROM patients WHERE ssn = '123-45-6789'`, `SELECT ssn FROM patients WHERE ssn = $1`},
		{`SELECT 1, -2, - 3.5, 4e10, -.5`, `SELECT $1, $2, $3, $4, $5`},
		{`SELECT a - 1, a-1, (a) -1, f(x) - 2, b[1] - 3`, `SELECT a - $1, a-$2, (a) -$3, f(x) - $4, b[$5] - $6`},
		// pg_query's Normalize left $17 and $23 in these.
		{`SELECT name FROM patients WHERE mrn = - -7 AND id = - -3`, `SELECT name FROM patients WHERE mrn = - $1 AND id = - $2`},
		{`SELECT name FROM patients WHERE mrn = -/* sign */7`, `SELECT name FROM patients WHERE mrn = - $1`},
		// Every string form, including the ones whose extent the scanner
		// does not report (U&).
		{`SELECT E'a\'b', $$c$$, $t$d$t$, X'1F', B'101', U&'\0031', u&'d!0061t' UESCAPE '!'`, `SELECT $1, $2, $3, $4, $5, $6, $7 UESCAPE $8`},
		{"SELECT 'a'\n  'b' FROM t", `SELECT $1 FROM t`},
		// Numbering continues after the parameters the text holds.
		{`UPDATE patients SET ssn = $2 WHERE id = 5 AND name = $1`, `UPDATE patients SET ssn = $2 WHERE id = $3 AND name = $1`},
		// Comments go; words they separated stay apart.
		{"SELECT /* ssn 123-45-6789 */ a/*x*/b -- 123-45-6789\nFROM t", "SELECT  a b\nFROM t"},
		{"-- only a comment\nSELECT 1", `SELECT $1`},
		// TRUE, FALSE and NULL are values, except in IS [NOT] tests.
		{`UPDATE patients SET hiv = TRUE, note = NULL WHERE flag IS NOT FALSE AND x IS NULL`, `UPDATE patients SET hiv = $1, note = $2 WHERE flag IS NOT FALSE AND x IS NULL`},
		// A literal glued to a name keeps apart from it.
		{`SELECT 'x'b FROM t`, `SELECT $1 b FROM t`},
		{`SELECT "quoted 1" FROM t WHERE c = 0x1F OR d = 1_000`, `SELECT "quoted 1" FROM t WHERE c = $1 OR d = $2`},
		// Text that does not lex gives nothing rather than something.
		{`SELECT 'unterminated`, ``},
	} {
		got := normalizeSQL(c.in)
		if got != c.want {
			t.Errorf("normalizeSQL(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
		checkNormalized(t, c.in, got)
	}
}

// checkNormalized is the property that matters for the audit trail: the
// normalized text lexes, holds no constant, no comment and no TRUE, FALSE
// or NULL outside IS [NOT], and its parameters are exactly those of the
// original text plus one placeholder each, written $n with nothing glued
// to them.
func checkNormalized(t testing.TB, in, out string) {
	t.Helper()
	if out == "" {
		return
	}
	orig, err := pg.Scan(in)
	if err != nil {
		t.Fatalf("normalized text for input that does not lex: %q → %q", in, out)
	}
	params := map[int]bool{}
	hugeParam := false
	paramTexts := map[string]bool{}
	for _, tk := range orig.Tokens {
		if tk.Token == pg.Token_PARAM {
			n, err := strconv.Atoi(in[tk.Start+1 : tk.End])
			if err != nil || n > 1<<20 {
				hugeParam = true // PostgreSQL refuses it; no numbering to check
			}
			params[n] = true
			paramTexts[in[tk.Start:tk.End]] = true
		}
	}
	sr, err := pg.Scan(out)
	if err != nil {
		t.Fatalf("normalized text does not lex: %q → %q: %v", in, out, err)
	}
	var prev, prev2 pg.Token
	seen := map[int]bool{}
	for _, tk := range sr.Tokens {
		switch {
		case isConstToken(tk.Token):
			t.Fatalf("a constant survives: %q → %q", in, out)
		case tk.Token == pg.Token_SQL_COMMENT || tk.Token == pg.Token_C_COMMENT:
			t.Fatalf("a comment survives: %q → %q", in, out)
		case (tk.Token == pg.Token_TRUE_P || tk.Token == pg.Token_FALSE_P || tk.Token == pg.Token_NULL_P) &&
			!(prev == pg.Token_IS || prev == pg.Token_NOT && prev2 == pg.Token_IS):
			t.Fatalf("a boolean or NULL value survives: %q → %q", in, out)
		case tk.Token == pg.Token_PARAM:
			text := out[tk.Start:tk.End]
			n, err := strconv.Atoi(text[1:])
			if (err != nil || text != "$"+strconv.Itoa(n)) && !paramTexts[text] {
				t.Fatalf("parameter %q is not $n: %q → %q", text, in, out)
			}
			if seen[n] && !params[n] {
				t.Fatalf("placeholder $%d twice: %q → %q", n, in, out)
			}
			seen[n] = true
		}
		prev, prev2 = tk.Token, prev
	}
	if hugeParam {
		return
	}
	highest := 0
	for n := range params {
		highest = max(highest, n)
	}
	for n := range seen {
		if !params[n] && n <= highest {
			t.Fatalf("placeholder $%d collides with the text's parameters: %q → %q", n, in, out)
		}
	}
	for n := highest + 1; n <= highest+len(seen)-countIn(seen, params); n++ {
		if !seen[n] {
			t.Fatalf("placeholders are not numbered $%d on without gaps: %q → %q", highest+1, in, out)
		}
	}
}

func countIn(seen, params map[int]bool) int {
	k := 0
	for n := range seen {
		if params[n] {
			k++
		}
	}
	return k
}

// Every statement of the data-driven cases and the regression-style list.
func TestNormalizeCorpus(t *testing.T) {
	inputs := corpusInputs(t)
	if len(inputs) < 150 {
		t.Fatalf("only %d inputs", len(inputs))
	}
	for _, s := range inputs {
		checkNormalized(t, s, normalizeSQL(s))
	}
}

// FuzzNormalize checks the property for any text; the seed corpus is in
// testdata/fuzz/FuzzNormalize.
func FuzzNormalize(f *testing.F) {
	for _, s := range regressionStyle {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		checkNormalized(t, sql, normalizeSQL(sql))
	})
}

func TestPG16Number(t *testing.T) {
	for _, c := range []struct {
		sql string
		pos int
	}{
		{`SELECT ssn FROM patients WHERE mrn = 0x1F`, 38},
		{`SELECT ssn FROM patients WHERE mrn = 0o17 OR mrn = 0B101`, 38},
		{`SELECT ssn FROM patients WHERE mrn = 1_000`, 38},
		{`SELECT ssn FROM patients WHERE mrn = 1.000_5`, 38},
		{`SELECT ssn FROM patients WHERE mrn = 31`, 0},
		{`SELECT ssn FROM patients WHERE ssn = '0x1F' AND n = "a_1" -- 0x1F 1_0`, 0},
		{`SELECT ssn FROM t_1 WHERE c1_2 = $1`, 0},
		{`SELECT 0.5e10, 10, 0`, 0},
	} {
		if got := pg16Number(c.sql); got != c.pos {
			t.Errorf("pg16Number(%q) = %d, want %d", c.sql, got, c.pos)
		}
	}
}

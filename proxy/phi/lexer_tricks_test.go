package phi

import (
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Issue 18, item 5: lexer tricks in statements on PHI relations. Each
// statement is either refused, or stores what PostgreSQL itself parses
// from it (the same text run directly on the plaintext twin
// patients_plain is the reference); and the server's own log
// (log_statement = all) never holds the value in the clear — a
// statement the proxy misread would carry it there.
func TestLexerTricksOnPHIStatements(t *testing.T) {
	ctx, p := start(t)
	direct, via := p.direct(pgx.QueryExecModeSimpleProtocol), p.via(pgx.QueryExecModeSimpleProtocol)
	// The canary is split where the trick allows, so that only the
	// parsed value, never the text, spells it. The reference statement
	// (on the plaintext twin, logged in the clear) uses another canary of
	// the same shape: "CANARY" + "-lex-PID" / "-ref-PID".
	c, ref := canary(t, "lex"), canary(t, "ref")
	head, tail, refTail := c[:6], c[6:], ref[6:]
	type trick struct{ name, values string }
	cases := []trick{
		{"dollar quoting", "$$" + c + "$$"},
		{"tagged dollar quoting holding a quote", "$q$" + head + "'" + tail + "$q$"},
		{"E string with an escaped quote", `E'` + head + `\'` + tail + `'`},
		{"E string with octal and hex escapes", `E'` + head + `\101\x42` + tail + `'`},
		{"nested comments around quotes", "/* '/* */ ' */ '" + c + "' /* ' */"},
		{"a line comment holding a quote", "'" + c + "' -- it's\n"},
		{"string continuation across a newline", "'" + head + "'\n'" + tail + "'"},
		{"string continuation across a comment", "'" + head + "' -- x\n'" + tail + "'"},
		{"U& string", `U&'` + head + `\0041` + tail + `'`},
		{"U& string with UESCAPE", `U&'` + head + `!0041` + tail + `' UESCAPE '!'`},
		{"a quoted column name", "'" + c + "'"}, // with "ssn" quoted below
		{"standard string with backslashes", `'` + head + `\\` + tail + `'`},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := 7900 + i
			col := "ssn"
			if tc.name == "a quoted column name" {
				col = `"ssn"`
			}
			q := func(table string) string {
				return "INSERT INTO " + table + " (id, " + col + ") VALUES (" + strconv.Itoa(id) + ", " + tc.values + ")"
			}
			_, want := direct.Exec(ctx, strings.ReplaceAll(q("patients_plain"), tail, refTail))
			_, got := via.Exec(ctx, q("patients"))
			switch {
			case got != nil && want == nil:
				// Refused: fine, if the proxy said why.
				if c := sqlstate(got); c == "" || c == "XX000" {
					t.Fatalf("refused without a clear SQLSTATE: %v", got)
				}
				t.Logf("refused: %v", got)
			case got != nil:
				// PostgreSQL refuses it too.
			case want != nil:
				t.Fatalf("the proxy accepted what PostgreSQL refuses (%v)", want)
			default:
				var plain, enc string
				if err := direct.QueryRow(ctx, "SELECT ssn FROM patients_plain WHERE id = $1", id).Scan(&plain); err != nil {
					t.Fatal(err)
				}
				if err := via.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", id).Scan(&enc); err != nil {
					t.Fatal(err)
				}
				plain = strings.ReplaceAll(plain, refTail, tail)
				if enc != plain {
					t.Fatalf("stored %q through the proxy, PostgreSQL parses %q", enc, plain)
				}
			}
			assertNotLogged(t, c)
			stillWorks(t, ctx, via)
		})
	}
	// standard_conforming_strings = off: refused (TestSessionSettings);
	// a NUL byte cannot be in a Query message at all.
	if strings.Contains(p.logs.String(), head+tail) {
		t.Fatal("a value reached the proxy's log")
	}
}

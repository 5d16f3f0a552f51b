package rewrite

import (
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/pgerr"
)

// threadSchema has a PHI table public.t and a plain table s.t of the same
// name, and a schema named after the role r2.
const threadSchema = `
table public.t: id int4, ssn text PHI deterministic
table s.t: id int4, ssn text
table r2.t: id int4, ssn text
`

// The statements of one string are planned with the state the statements
// before them leave; where the text cannot tell that state, a later
// statement naming a PHI relation is refused, never planned on a guess.
func TestStatementsOfAStringSeeEarlierEffects(t *testing.T) {
	cols, cat := loadSchema(t, threadSchema)
	p := NewPlanner(cols, cat, NewCache(64))
	base := Session{SearchPath: "s, public", User: "app", SessionUser: "app", ResetPath: `"$user", public`}
	for _, tc := range []struct {
		name string
		sess func(Session) Session
		sql  string
		// want is, per statement, "phi" (planned on public.t), "plain"
		// (not PHI) or "-" (not analyzed); or the SQLSTATE of a refusal.
		want string
	}{
		{"a SET applies to the INSERT after it", nil,
			"set search_path = public; insert into t values (1, 'x')", "plain phi"},
		{"and back", func(s Session) Session { s.SearchPath = "public"; return s },
			"set search_path = s, public; insert into t values (1, 'x')", "plain plain"},
		{"SET LOCAL too", nil,
			"begin; set local search_path = public; insert into t values (1, 'x'); commit", "plain plain phi plain"},
		{"RESET returns to the session default", nil,
			"reset search_path; insert into t values (1, 'x')", "plain phi"},
		{"SET … TO DEFAULT", nil,
			"set search_path to default; insert into t values (1, 'x')", "plain phi"},
		{"literal set_config", nil,
			"select set_config('search_path', 'public', false); insert into t values (1, 'x')", "plain phi"},
		{"computed set_config", nil,
			"select set_config('search'||'_path', 'public', false); insert into t values (1, 'x')", "0A000"},
		{"set_config with a computed value", nil,
			"select set_config('search_path', current_setting('x.y'), false); insert into t values (1, 'x')", "0A000"},
		{"SET ROLE changes $user", func(s Session) Session { s.SearchPath = `"$user", public`; return s },
			"set role r2; insert into t values (1, 'x')", "plain plain"},
		{"RESET ROLE changes it back", func(s Session) Session { s.SearchPath = `"$user", public`; s.User = "r2"; return s },
			"reset role; insert into t values (1, 'x')", "plain phi"},
		{"SET SESSION AUTHORIZATION is read back from the server", nil,
			"set session authorization r2; insert into t values (1, 'x')", "0A000"},
		{"a DO block may set anything", func(s Session) Session { s.SearchPath = "public"; return s },
			"do $$begin perform 1; end$$; insert into t values (1, 'x')", "0A000"},
		{"DDL on a PHI name", func(s Session) Session { s.SearchPath = "public"; return s },
			"drop table s.t; insert into t values (1, 'x')", "0A000"},
		{"CREATE SCHEMA may bring relations", func(s Session) Session { s.SearchPath = "public"; return s },
			"create schema x; insert into t values (1, 'x')", "0A000"},
		{"ROLLBACK after a SET in the string", func(s Session) Session { s.SearchPath = "public"; return s },
			"begin; set search_path = s, public; rollback; insert into t values (1, 'x')", "0A000"},
		{"ROLLBACK of a transaction that changed state earlier", func(s Session) Session { s.SearchPath = "public"; s.TxDirty = true; return s },
			"rollback; insert into t values (1, 'x')", "0A000"},
		{"COMMIT of a clean transaction changes nothing", func(s Session) Session { s.SearchPath = "public"; return s },
			"begin; commit; insert into t values (1, 'x')", "plain plain phi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sess := base
			if tc.sess != nil {
				sess = tc.sess(sess)
			}
			pl, err := p.Plan(tc.sql, sess)
			got := ""
			if err != nil {
				pe := pgerr.As(err)
				if pe == nil {
					t.Fatal(err)
				}
				got = pe.Code.String()
			} else {
				var parts []string
				for _, st := range pl.Statements {
					switch {
					case len(st.Relations) == 1 && st.Relations[0] == "public.t":
						parts = append(parts, "phi")
					case len(st.Relations) == 0:
						parts = append(parts, "plain")
					default:
						parts = append(parts, strings.Join(st.Relations, ","))
					}
				}
				got = strings.Join(parts, " ")
			}
			if got != tc.want {
				t.Fatalf("%s\n got %s\nwant %s", tc.sql, got, tc.want)
			}
		})
	}
}

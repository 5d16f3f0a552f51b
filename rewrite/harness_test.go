package rewrite

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// sessionFromArgs builds the Session of a plan directive: search_path=…,
// user=…, reset_path=…, session_user=…, temp=a,b (the session's temporary
// relations). Unknown arguments fail the test when t is given.
func sessionFromArgs(t *testing.T, d *datadriven.TestData) Session {
	sess := Session{SearchPath: `"$user", public`, User: "app"}
	for _, arg := range d.CmdArgs {
		switch arg.Key {
		case "search_path":
			sess.SearchPath = strings.Join(arg.Vals, ", ")
		case "user":
			sess.User = arg.Vals[0]
		case "reset_path":
			sess.ResetPath = strings.Join(arg.Vals, ", ")
		case "session_user":
			sess.SessionUser = arg.Vals[0]
		case "database":
			sess.Database = arg.Vals[0]
		case "temp":
			var names []string
			for _, v := range arg.Vals {
				names = append(names, strings.Split(v, ",")...)
			}
			sort.Strings(names)
			for _, n := range names {
				sess.Temp += n + "\x00"
			}
		default:
			if t != nil {
				d.Fatalf(t, "unknown argument %s", arg.Key)
			}
		}
	}
	return sess
}

// loadSchema builds the PHI column map and catalog from the small schema
// language of testdata/standard.schema.
func loadSchema(t testing.TB, text string) (*Columns, *MemCatalog) {
	t.Helper()
	cat := NewMemCatalog(1)
	var cols []Column
	for ln, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		head, body, _ := strings.Cut(rest, ":")
		head = strings.TrimSpace(head)
		var reads []string
		if i := strings.Index(head, "(reads "); i >= 0 {
			reads = strings.Fields(strings.TrimSuffix(head[i+len("(reads "):], ")"))
			head = strings.TrimSpace(head[:i])
		}
		schema, name, ok := strings.Cut(head, ".")
		if !ok {
			t.Fatalf("schema line %d: want schema.name: %q", ln+1, line)
		}
		if kind == "key" {
			var names []string
			for _, c := range strings.Split(body, ",") {
				names = append(names, strings.TrimSpace(c))
			}
			cat.AddKey(schema, name, names...)
			continue
		}
		var attrs []Attr
		for _, c := range splitOutsideParens(body) {
			f := strings.Fields(c)
			if len(f) == 0 {
				continue
			}
			a := Attr{Name: f[0], Type: f[1]}
			if len(f) >= 4 && f[2] == "PHI" {
				a.Type = "bytea"
				col := Column{Schema: schema, Table: name, Name: f[0], Type: f[1], Mode: f[3]}
				if len(f) >= 6 && f[4] == "key" {
					col.Key = f[5]
				}
				cols = append(cols, col)
			}
			attrs = append(attrs, a)
		}
		switch kind {
		case "table":
			cat.AddTable(schema, name, attrs...)
		case "view":
			cat.AddView(schema, name, reads, attrs...)
		case "function":
			cat.AddFunction(schema, name, reads...)
		default:
			t.Fatalf("schema line %d: unknown kind %q", ln+1, kind)
		}
	}
	m, err := NewColumns(cols)
	if err != nil {
		t.Fatal(err)
	}
	return m, cat
}

func standardSchema(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("testdata/standard.schema")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// describePlan prints a plan the way the data-driven files show it.
func describePlan(p *Plan, err error) string {
	if err != nil {
		return describeErr(err)
	}
	var b strings.Builder
	if p.PassThrough {
		b.WriteString("pass-through\n")
	}
	if p.EndUser != "" {
		fmt.Fprintf(&b, "end_user: %s\n", p.EndUser)
	}
	multi := len(p.Statements) > 1
	for i, st := range p.Statements {
		cursorOp := st.Declare != nil || st.Fetch != "" || st.CloseCursor != "" || st.CloseAll
		if !st.TouchesPHI && st.Effects == 0 && !cursorOp && p.PassThrough {
			continue
		}
		ind := ""
		if multi || !p.PassThrough {
			if multi {
				fmt.Fprintf(&b, "statement %d: %s", i+1, st.Tag)
			} else {
				fmt.Fprintf(&b, "%s", st.Tag)
			}
			if st.Action != "" {
				fmt.Fprintf(&b, " (%s)", st.Action)
			}
			if st.Explain {
				b.WriteString(" (explain only)")
			}
			b.WriteString("\n")
			ind = "  "
		}
		if st.TouchesPHI {
			fmt.Fprintf(&b, "%srelations: %s\n", ind, strings.Join(st.Relations, ", "))
			if len(st.Columns) > 0 {
				fmt.Fprintf(&b, "%scolumns: %s\n", ind, strings.Join(st.Columns, ", "))
			}
		}
		if len(st.Slots)+len(st.Edits) > 0 {
			one := &Plan{SQL: p.SQL, Statements: []*Statement{st}}
			n := 0
			sent, _ := one.Render(func(Slot) (string, error) { n++; return fmt.Sprintf("$ENC%d", n), nil })
			fmt.Fprintf(&b, "%ssend: %s\n", ind, strings.TrimSpace(sent[st.Offset:len(sent)-(len(p.SQL)-st.Offset-st.Length)]))
		}
		for k, s := range st.Slots {
			if s.Array {
				fmt.Fprintf(&b, "%s$ENC%d = ARRAY[encrypt each element of %q%s]::bytea[] for %s\n", ind, k+1, s.Text, coercion(s.Cast, s.Assign, s.Column), colDesc(s.Column))
				continue
			}
			fmt.Fprintf(&b, "%s$ENC%d = encrypt(%q%s) for %s\n", ind, k+1, s.Text, coercion(s.Cast, s.Assign, s.Column), colDesc(s.Column))
		}
		for _, pr := range st.Params {
			arr := ""
			if pr.Array {
				arr = " (array, each element)"
			}
			fmt.Fprintf(&b, "%sparam $%d%s: encrypt%s for %s\n", ind, pr.Number, arr, coercion(pr.Cast, pr.Assign, pr.Column), colDesc(pr.Column))
		}
		for _, r := range st.Results {
			fmt.Fprintf(&b, "%soutput column %d: decrypt %s\n", ind, r.Position+1, colDesc(r.Column))
		}
		for _, i := range st.Redact {
			fmt.Fprintf(&b, "%soutput column %d: redact envelopes\n", ind, i+1)
		}
		if c := st.Copy; c != nil {
			dir := "out"
			if c.In {
				dir = "in"
			}
			var fs []string
			for _, f := range c.Fields {
				if f.Column != nil {
					fs = append(fs, f.Name+"*")
				} else {
					fs = append(fs, f.Name)
				}
			}
			fmt.Fprintf(&b, "%scopy %s, format %s, fields: %s (* = PHI)\n", ind, dir, c.Format, strings.Join(fs, ", "))
		}
		if st.Effects != 0 {
			fmt.Fprintf(&b, "%seffects: %s\n", ind, st.Effects)
		}
		if st.SearchPath != "" {
			fmt.Fprintf(&b, "%snew search_path: %s\n", ind, st.SearchPath)
		}
		if st.SetEndUser != "" {
			fmt.Fprintf(&b, "%snew end_user: %s\n", ind, st.SetEndUser)
		}
		if st.Prepare != "" {
			fmt.Fprintf(&b, "%sprepares: %s\n", ind, st.Prepare)
		}
		if e := st.Execute; e != nil {
			var args []string
			for _, a := range e.Args {
				args = append(args, a.Kind)
			}
			fmt.Fprintf(&b, "%sexecutes: %s(%s)\n", ind, e.Name, strings.Join(args, ", "))
		}
		if c := st.Declare; c != nil {
			var opts []string
			for _, o := range []struct {
				on   bool
				name string
			}{{c.Binary, "binary"}, {c.Scroll, "scroll"}, {c.Hold, "with hold"}} {
				if o.on {
					opts = append(opts, o.name)
				}
			}
			fmt.Fprintf(&b, "%sdeclares cursor: %s", ind, c.Name)
			if len(opts) > 0 {
				fmt.Fprintf(&b, " (%s)", strings.Join(opts, ", "))
			}
			b.WriteString("\n")
		}
		if st.Fetch != "" {
			verb := "fetches from"
			if st.Move {
				verb = "moves"
			}
			fmt.Fprintf(&b, "%s%s cursor: %s\n", ind, verb, st.Fetch)
		}
		if st.CloseCursor != "" {
			fmt.Fprintf(&b, "%scloses cursor: %s\n", ind, st.CloseCursor)
		}
		if st.CloseAll {
			fmt.Fprintf(&b, "%scloses every cursor\n", ind)
		}
		if n := st.Normalized(); n != "" {
			fmt.Fprintf(&b, "%snormalized: %s\n", ind, n)
			if len(st.Fingerprint()) != 16 {
				panic("fingerprint missing for " + n)
			}
		}
	}
	return b.String()
}

// coercion describes what the proxy applies to a value before encrypting
// it: an explicit cast with a modifier, and the column's modifier on a
// write (shown only for columns that have one).
func coercion(cast string, assign bool, c PHIColumn) string {
	out := ""
	if cast != "" {
		out += " cast to " + cast
	}
	if baseType(c.Type) != c.Type {
		if assign {
			out += " assigned"
		} else {
			out += " compared"
		}
	}
	return out
}

func colDesc(c PHIColumn) string {
	s := fmt.Sprintf("%s (%s, %s", c.Ident, c.Type, c.Mode)
	if c.Key != c.Ident {
		s += ", key " + c.Key
	}
	return s + ")"
}

func describeErr(err error) string {
	pe := asPgErr(err)
	if pe == nil {
		return "error: " + err.Error() + "\n"
	}
	s := fmt.Sprintf("refused %s: %s\n", pe.Code, pe.Message)
	if pe.Hint != "" {
		s += "hint: " + pe.Hint + "\n"
	}
	if pe.Position > 0 {
		s += fmt.Sprintf("position: %d\n", pe.Position)
	}
	return s
}

// splitOutsideParens splits a schema line's columns at commas that are not
// inside a type modifier (numeric(5,2)).
func splitOutsideParens(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// checkPinned is the pinning property (pin.go), checked on the text the
// proxy would send: no relation reference in it names a PHI relation, or a
// view or function over one, without a schema — apart from CTE references,
// the names of relations being created and FOR UPDATE OF names — and no
// DROP names one unqualified. It walks the tree on its own, not with the
// planner's walker, so that a reference the planner's walk misses fails it.
func checkPinned(t testing.TB, pl *Planner, sql, rendered string) {
	t.Helper()
	tree, err := pg.Parse(rendered)
	if err != nil {
		return // the invariants check that rendered text parses
	}
	for _, raw := range tree.Stmts {
		ctes := map[string]bool{}
		created := map[*pg.RangeVar]bool{}
		var refs []*pg.RangeVar
		walkTree(raw.Stmt.ProtoReflect(), func(m protoreflect.Message) bool {
			switch x := m.Interface().(type) {
			case *pg.CommonTableExpr:
				ctes[x.Ctename] = true
			case *pg.CreateStmt:
				created[x.Relation] = true
			case *pg.IntoClause:
				created[x.Rel] = true
			case *pg.ViewStmt:
				created[x.View] = true
			case *pg.CreateSeqStmt:
				created[x.Sequence] = true
			case *pg.CompositeTypeStmt:
				created[x.Typevar] = true
			case *pg.LockingClause:
				for _, r := range x.LockedRels {
					created[r.GetRangeVar()] = true // FOR UPDATE OF names a FROM item
				}
			case *pg.RangeVar:
				refs = append(refs, x)
			case *pg.DropStmt:
				for _, o := range x.Objects {
					items := o.GetList().GetItems()
					if len(items) == 1 && pl.pins[items[0].GetString_().GetSval()] && dropKeywords[x.RemoveType] != nil {
						t.Fatalf("pinning: DROP of unqualified %q sent: %q → %q", items[0].GetString_().GetSval(), sql, rendered)
					}
				}
			}
			return true
		})
		for _, rv := range refs {
			if rv.Schemaname == "" && pl.pins[rv.Relname] && !created[rv] && !ctes[rv.Relname] {
				t.Fatalf("pinning: unqualified reference to %q sent: %q → %q", rv.Relname, sql, rendered)
			}
		}
	}
}

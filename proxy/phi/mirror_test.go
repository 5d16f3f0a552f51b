package phi

import (
	"testing"

	"github.com/phiproxy/phiproxy/rewrite"
)

// TestMirrorFollowsTheEndUserLikeASetting drives the mirror with the
// server's answers for SET phiproxy.end_user as PostgreSQL applies a
// setting in and out of transactions.
func TestMirrorFollowsTheEndUserLikeASetting(t *testing.T) {
	set := func(v string, local bool) *rewrite.Statement {
		st := &rewrite.Statement{Tag: "SET", Effects: rewrite.EffectEndUser, SetEndUser: v}
		if local {
			st.Effects |= rewrite.EffectLocal
		}
		return st
	}
	tx := func(tag, savepoint string) *rewrite.Statement {
		return &rewrite.Statement{Tag: tag, Effects: rewrite.EffectTransaction, Savepoint: savepoint}
	}
	type step struct {
		st    *rewrite.Statement
		tag   string // the CommandComplete tag; "" for the statement's Tag
		ready byte   // a ReadyForQuery instead of a statement
		err   bool   // an ErrorResponse instead
	}
	for _, tc := range []struct {
		name  string
		start string
		steps []step
		want  string
	}{
		{"SET outside a transaction lasts", "", []step{{st: set("dr.a", false)}, {ready: 'I'}}, "dr.a"},
		{"SET in a transaction that rolls back is undone", "dr.a", []step{
			{st: tx("BEGIN", "")}, {ready: 'T'}, {st: set("dr.b", false)}, {st: tx("ROLLBACK", "")}, {ready: 'I'}}, "dr.a"},
		{"SET LOCAL lasts until the transaction ends", "", []step{
			{st: tx("BEGIN", "")}, {st: set("dr.b", true)}, {st: tx("COMMIT", "")}, {ready: 'I'}}, ""},
		{"SET in a committed transaction lasts", "", []step{
			{st: tx("BEGIN", "")}, {st: set("dr.b", false)}, {st: tx("COMMIT", "")}, {ready: 'I'}}, "dr.b"},
		{"a COMMIT answered with ROLLBACK undoes it", "", []step{
			{st: tx("BEGIN", "")}, {st: set("dr.b", false)}, {err: true}, {st: tx("COMMIT", ""), tag: "ROLLBACK"}, {ready: 'I'}}, ""},
		{"ROLLBACK TO SAVEPOINT restores the savepoint's", "", []step{
			{st: tx("BEGIN", "")}, {st: set("dr.a", false)}, {st: tx("SAVEPOINT", "s")}, {st: set("dr.b", false)},
			{st: tx("ROLLBACK TO", "s")}, {st: tx("COMMIT", "")}, {ready: 'I'}}, "dr.a"},
		{"an error in an implicit transaction undoes it", "", []step{{st: set("dr.b", false)}, {err: true}, {ready: 'I'}}, ""},
		{"RESET returns to the startup value", "dr.start", []step{{st: set("dr.b", false)}, {st: set("", false)}, {ready: 'I'}}, "dr.start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMirror(`"$user", public`, "app", tc.start)
			for _, s := range tc.steps {
				switch {
				case s.ready != 0:
					m.ready(s.ready)
				case s.err:
					m.errored()
				default:
					tag := s.tag
					if tag == "" {
						tag = s.st.Tag
					}
					m.completed(s.st, tag)
				}
			}
			if got := m.identity(); got.EndUser != tc.want || got.Role != "app" {
				t.Fatalf("identity %+v, want end user %q", got, tc.want)
			}
		})
	}
	t.Run("the end user means nothing to the planner", func(t *testing.T) {
		m := newMirror(`"$user", public`, "app", "")
		m.completed(tx("BEGIN", ""), "BEGIN")
		m.completed(set("dr.b", false), "SET")
		if m.session().TxDirty {
			t.Fatal("SET phiproxy.end_user in a transaction made the planner's session dirty")
		}
	})
}

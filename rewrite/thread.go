package rewrite

import (
	"sort"
	"strings"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Sequence is the session state as it evolves through statements that run
// one after another with no chance to read the server's answers between
// them (the statements of one string, an extended-protocol batch before
// Sync): PostgreSQL runs them in order, so a SET search_path, SET ROLE or
// CREATE TEMP TABLE applies to the statements after it. What the text
// cannot tell (a computed set_config, a DO block, DDL that may move a PHI
// name, a COMMIT or ROLLBACK that may undo changes) makes the state
// unknown: a later statement of the same string that names a PHI relation
// is then refused, never planned against a guess. (Across round trips the
// proxy mirrors the server's confirmed state and reads it back when it is
// unknown.)
type Sequence struct {
	sess    Session
	path    []string
	changed bool   // the string changed the state before this point
	unknown string // why the state is unknown, "" if it is known
	// created are relations DDL naming PHI created or renamed so far:
	// no snapshot knows them yet.
	created []string
}

// Created lists the relations DDL naming PHI created or renamed so far.
func (th *Sequence) Created() []string { return th.created }

// NewSequence starts a Sequence at sess.
func NewSequence(sess Session) *Sequence {
	return &Sequence{sess: sess, path: ParseSearchPath(sess.SearchPath)}
}

// Session is the state after the statements so far, and why it is
// unknown ("" if it is known).
func (th *Sequence) Session() (Session, string) { return th.sess, th.unknown }

// MarkUnknown makes the state unknown from here on: why names what made
// it so.
func (th *Sequence) MarkUnknown(why string) {
	if th.unknown == "" {
		th.unknown = why
	}
}

// Changed reports whether the statements so far changed the state or made
// it unknown.
func (th *Sequence) Changed() bool { return th.changed || th.unknown != "" }

// usable refuses st when the state it would be planned with is unknown.
func (th *Sequence) usable(p *Planner, sql string, st *Statement) error {
	if th.unknown == "" {
		return nil
	}
	return pgerr.Newf(pgerr.FeatureNotSupported, "phiproxy cannot tell which relation %s means after %s earlier in the same query string",
		p.mentionedRelation(sql[st.Offset:st.Offset+st.Length]), th.unknown).
		WithHint("send this statement in a query of its own: phiproxy then plans it with the session state the server reports")
}

// After applies st's effects, as known from its text, to the state the
// statements after it see.
func (th *Sequence) After(st *Statement) {
	if st.StateUnknown {
		th.unknown = st.Tag
		return
	}
	if st.NameDDL {
		th.unknown = st.Tag
		if st.Creates != "" {
			th.created = append(th.created, st.Creates)
		}
		return
	}
	if st.Effects&EffectTransaction != 0 {
		switch st.Tag {
		case "BEGIN", "START", "SAVEPOINT", "RELEASE":
		default:
			// COMMIT (which a failed transaction answers with ROLLBACK),
			// ROLLBACK, ROLLBACK TO, PREPARE TRANSACTION may undo or
			// discard changes of this transaction.
			if th.changed || th.sess.TxDirty {
				th.unknown = st.Tag
			}
		}
		return
	}
	if st.Effects&EffectSearchPath != 0 {
		switch {
		case st.PathReset && th.sess.ResetPath == "" && th.sess.SearchPath != "":
			th.unknown = st.Tag
			return
		case st.PathReset:
			th.sess.SearchPath = th.sess.ResetPath
		default:
			th.sess.SearchPath = st.SearchPath
		}
		th.path = ParseSearchPath(th.sess.SearchPath)
		th.changed = true
	}
	if st.Effects&EffectRole != 0 {
		if st.Role == "" {
			th.sess.User = th.sess.SessionUser
		} else {
			th.sess.User = st.Role
		}
		th.changed = true
	}
	if st.TempClear {
		th.sess.Temp = ""
		th.changed = true
	}
	for _, d := range st.TempDrop {
		th.sess.Temp = TempWithout(th.sess.Temp, d)
		th.changed = true
	}
	if st.TempCreate != "" {
		th.sess.Temp = TempWith(th.sess.Temp, st.TempCreate)
		th.changed = true
	}
}

// TempWith returns the Session.Temp list temp with name added.
func TempWith(temp, name string) string {
	names := TempNames(temp)
	for _, n := range names {
		if n == name {
			return temp
		}
	}
	names = append(names, name)
	sort.Strings(names)
	return joinTemp(names)
}

// TempWithout returns the Session.Temp list temp without name.
func TempWithout(temp, name string) string {
	names := TempNames(temp)
	out := names[:0]
	for _, n := range names {
		if n != name {
			out = append(out, n)
		}
	}
	return joinTemp(out)
}

// TempNames splits a Session.Temp list.
func TempNames(temp string) []string {
	if temp == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(temp, "\x00"), "\x00")
}

func joinTemp(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return strings.Join(names, "\x00") + "\x00"
}

// NamesAny reports whether sql has one of names as a word, ignoring case:
// over-matching costs only a refusal.
func NamesAny(sql string, names []string) bool {
	if len(names) == 0 {
		return false
	}
	low := strings.ToLower(sql)
	for _, n := range names {
		n = strings.ToLower(n)
		for from := 0; from < len(low); {
			i := strings.Index(low[from:], n)
			if i < 0 {
				break
			}
			i += from
			end := i + len(n)
			if (i == 0 || !isIdentByte(low[i-1])) && (end == len(low) || !isIdentByte(low[end])) {
				return true
			}
			from = i + 1
		}
	}
	return false
}

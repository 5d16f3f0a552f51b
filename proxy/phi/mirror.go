package phi

import (
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// names is the part of the session's state that decides which relation a
// name means, and the end user (SET phiproxy.end_user: a setting like the
// others, so it follows the same transaction rules; it means nothing to
// the planner).
type names struct {
	path    string // search_path as SHOW prints it
	user    string // current_user: what "$user" means
	temp    string // the session's temporary relations (rewrite.Session.Temp)
	endUser string // phiproxy.end_user
	// breakGlass is phiproxy.break_glass: the reason of the session's
	// break-glass, "" when none.
	breakGlass string
}

// resolving is n without what does not change what a name means.
func (n names) resolving() names {
	n.endUser, n.breakGlass = "", ""
	return n
}

type savepoint struct {
	name      string
	eff, sess names
}

// mirror is the session's state as the server confirmed it: it changes
// only on the server's answers (CommandComplete, ErrorResponse,
// ReadyForQuery), never when the proxy forwards a request, and follows
// PostgreSQL's transaction semantics for settings: a SET lasts if its
// transaction commits, SET LOCAL until the transaction ends, ROLLBACK (or a
// COMMIT the server answers with ROLLBACK, or an error in an implicit
// transaction) restores the state the transaction started with, ROLLBACK
// TO SAVEPOINT the state at the savepoint. Temporary relations created or
// dropped in a transaction follow the same rules. It is guarded by
// session.mu and written by the server goroutine only.
type mirror struct {
	eff  names // in effect now
	sess names // what a COMMIT keeps (eff without SET LOCAL)
	base names // at the start of the transaction: what a ROLLBACK restores

	saves    []savepoint
	explicit bool // inside BEGIN … COMMIT
	failed   bool // the explicit transaction failed
	// unknown: a statement changed the state in a way its text does not
	// tell (see rewrite.Statement.StateUnknown); it must be read back from
	// the server before a statement that names PHI is planned.
	unknown bool
	// probedInTx: the state was read back inside a transaction, where a
	// later ROLLBACK may restore what the probe did not see.
	probedInTx bool
	// ddl: this transaction ran DDL that may change what a PHI name
	// means; it is invisible to the catalog snapshot until it commits.
	// ddlNames are the relations that DDL created or renamed.
	ddl      bool
	ddlNames []string
	// refresh: committed DDL the catalog snapshot must see before a
	// statement that names PHI is planned.
	refresh bool
	// catalog: this transaction ran DDL; refreshReq: it committed, and a
	// catalog refresh must be requested (the session does, under its
	// lock, so that a waiting statement sees the request).
	catalog    bool
	refreshReq bool

	resetPath    string // what RESET search_path returns to
	sessionUser  string // what RESET ROLE returns to
	resetEndUser string // what RESET phiproxy.end_user returns to

	// cursors are the open SQL cursors (cursor.go).
	cursors cursorSet

	database string // the session's database (for the catalog overlay)

}

func newMirror(path, user, endUser string) mirror {
	n := names{path: path, user: user, endUser: endUser}
	return mirror{eff: n, sess: n, base: n, resetPath: path, sessionUser: user, resetEndUser: endUser}
}

// session is the planner's view of the mirrored state.
func (m *mirror) session() rewrite.Session {
	eff, base := m.eff.resolving(), m.base.resolving()
	return rewrite.Session{SearchPath: m.eff.path, User: m.eff.user, Temp: m.eff.temp, Database: m.database,
		ResetPath: m.resetPath, SessionUser: m.sessionUser, TxDirty: eff != base || m.sess.resolving() != base}
}

// identity is who the session acts as now.
func (m *mirror) identity() proxy.Identity {
	return proxy.Identity{Role: m.eff.user, EndUser: m.eff.endUser}
}

// completed applies st once the server reported it complete with tag.
func (m *mirror) completed(st *rewrite.Statement, tag string) {
	m.cursors.completed(st, len(m.saves))
	if st.Effects&rewrite.EffectTransaction != 0 {
		m.transaction(st, tag)
		return
	}
	if st.StateUnknown {
		m.unknown = true
	}
	if st.NameDDL {
		m.ddl = true
		if st.Creates != "" {
			m.ddlNames = append(m.ddlNames, st.Creates)
		}
	}
	if st.Effects&rewrite.EffectCatalog != 0 {
		m.catalog = true
	}
	// set applies a SET (or SET LOCAL) of one setting: v, or its reset
	// value when v is "".
	set := func(field func(*names) *string, v, reset string) {
		if v == "" {
			v = reset
		}
		*field(&m.eff) = v
		if st.Effects&rewrite.EffectLocal == 0 {
			*field(&m.sess) = v
		}
	}
	if st.Effects&rewrite.EffectSearchPath != 0 {
		v := st.SearchPath
		if st.PathReset {
			v = m.resetPath
		} else if v == "" {
			v = `""` // SET search_path = '': an empty path, not RESET
		}
		set(func(n *names) *string { return &n.path }, v, m.resetPath)
	}
	if st.Effects&rewrite.EffectRole != 0 && !st.StateUnknown {
		set(func(n *names) *string { return &n.user }, st.Role, m.sessionUser)
	}
	if st.Effects&rewrite.EffectEndUser != 0 {
		// RESET, SET … TO DEFAULT, RESET ALL and DISCARD ALL return to
		// the session's starting value; so does SET to '' (rewrite does
		// not tell the two apart, and both are usually "").
		set(func(n *names) *string { return &n.endUser }, st.SetEndUser, m.resetEndUser)
	}
	if st.Effects&rewrite.EffectBreakGlass != 0 {
		set(func(n *names) *string { return &n.breakGlass }, st.SetBreakGlass, "")
	}
	if st.TempClear {
		m.eff.temp, m.sess.temp = "", ""
	}
	for _, d := range st.TempDrop {
		m.eff.temp = rewrite.TempWithout(m.eff.temp, d)
		m.sess.temp = rewrite.TempWithout(m.sess.temp, d)
	}
	if st.TempCreate != "" {
		m.eff.temp = rewrite.TempWith(m.eff.temp, st.TempCreate)
		m.sess.temp = rewrite.TempWith(m.sess.temp, st.TempCreate)
	}
}

func (m *mirror) transaction(st *rewrite.Statement, tag string) {
	switch st.Tag {
	case "BEGIN", "START":
		m.explicit = true
	case "SAVEPOINT":
		m.saves = append(m.saves, savepoint{name: st.Savepoint, eff: m.eff, sess: m.sess})
	case "RELEASE":
		if i := m.savepoint(st.Savepoint); i >= 0 {
			m.cursors.release(i)
			m.saves = m.saves[:i]
		}
	case "ROLLBACK TO":
		i := m.savepoint(st.Savepoint)
		m.cursors.rollbackTo(i)
		if i >= 0 {
			m.eff, m.sess = m.saves[i].eff, m.saves[i].sess
			m.saves = m.saves[:i+1]
			m.failed = false
		} else {
			m.unknown = true
		}
	case "COMMIT", "PREPARE":
		// A failed transaction answers COMMIT with ROLLBACK.
		if tag == "ROLLBACK" {
			m.rollback()
		} else {
			m.commit()
		}
		m.explicit = st.Chain
	case "ROLLBACK":
		m.rollback()
		m.explicit = st.Chain
	}
}

func (m *mirror) savepoint(name string) int {
	for i := len(m.saves) - 1; i >= 0; i-- {
		if m.saves[i].name == name {
			return i
		}
	}
	return -1
}

func (m *mirror) commit() {
	m.cursors.commit()
	m.eff = m.sess
	m.base = m.sess
	m.saves = m.saves[:0]
	m.failed = false
	if m.ddl {
		m.refresh = true
	}
	if m.catalog {
		m.refreshReq = true
	}
	m.ddl, m.catalog, m.ddlNames = false, false, nil
	if m.probedInTx {
		m.probedInTx = false
		m.unknown = true // what the probe read may have been SET LOCAL
	}
}

func (m *mirror) rollback() {
	m.cursors.rollback()
	m.eff, m.sess = m.base, m.base
	m.saves = m.saves[:0]
	m.failed = false
	m.ddl, m.catalog, m.ddlNames = false, false, nil
	if m.probedInTx {
		m.probedInTx = false
		m.unknown = true
	}
}

// errored records an ErrorResponse: outside an explicit transaction the
// implicit one (the rest of a Query string, or a batch up to Sync) is
// rolled back; inside one, the transaction is failed until its ROLLBACK.
func (m *mirror) errored() {
	if m.explicit {
		m.failed = true
		return
	}
	m.rollback()
}

// ready records ReadyForQuery: 'I' ends an implicit transaction (it
// committed unless errored already rolled it back).
func (m *mirror) ready(status byte) {
	switch status {
	case 'I':
		if m.explicit || m.eff != m.base || m.sess != m.base || m.ddl || m.catalog || m.probedInTx {
			m.commit()
		}
		m.cursors.commit() // a WITH HOLD cursor of the implicit transaction
		m.explicit = false
	case 'T':
		m.explicit = true
	case 'E':
		m.explicit, m.failed = true, true
	}
}

// probed sets the state read back from the server.
func (m *mirror) probed(n names, sessionUser string, inTx bool) {
	m.eff, m.sess = n, n
	if !inTx {
		m.base = n
	}
	m.sessionUser = sessionUser
	m.unknown = false
	m.probedInTx = inTx
}

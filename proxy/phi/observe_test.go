package phi

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
)

// recorder is a test Observer: it writes each Start and End as one line
// of text, and keeps every string it was shown, to check that no value
// is among them.
type recorder struct {
	mu     sync.Mutex
	lines  []string
	seen   []string // every string an Execution showed
	deny   string   // Start refuses executions of statements with this tag
	ended  chan struct{}
	endSig bool
}

func (r *recorder) line(point string, ex *Execution) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", point)
	if st := ex.Statement; st != nil {
		fmt.Fprintf(&b, " %s %s %s %s", st.Tag, st.Action, strings.Join(st.Relations, ","), strings.Join(st.Columns, ","))
		r.seen = append(r.seen, st.Normalized(), st.Fingerprint())
	} else {
		b.WriteString(" (unplanned)")
	}
	fmt.Fprintf(&b, " role=%s end_user=%s", ex.Identity.Role, ex.Identity.EndUser)
	if ex.Extended {
		b.WriteString(" extended")
	}
	if point == "end" {
		fmt.Fprintf(&b, " rows=%d", ex.Rows)
		if ex.SQLSTATE != "" {
			fmt.Fprintf(&b, " error=%s", ex.SQLSTATE)
		}
		if ex.Refused {
			b.WriteString(" refused")
		}
		if ex.Suspended {
			b.WriteString(" suspended")
		}
		if ex.Ended {
			b.WriteString(" session-ended")
		}
	}
	r.seen = append(r.seen, ex.Identity.Role, ex.Identity.EndUser, ex.SQLSTATE, ex.Session.User, ex.Session.Instance)
	r.seen = append(r.seen, ex.Session.Roles...)
	return b.String()
}

func (r *recorder) Start(ex *Execution) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, r.line("start", ex))
	if ex.Statement != nil && ex.Statement.Tag == r.deny && r.deny != "" {
		return pgerr.New(pgerr.InsufficientPrivilege, "denied by the test observer")
	}
	return nil
}

func (r *recorder) End(ex *Execution) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, r.line("end", ex))
	if ex.Ended && !r.endSig {
		r.endSig = true
		close(r.ended)
	}
}

// take returns the lines recorded since the last take.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lines
	r.lines = nil
	return l
}

func (r *recorder) expect(t *testing.T, what string, want ...string) {
	t.Helper()
	got := r.take()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s: the observer saw\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestObserverSeesTheStatementLifecycle(t *testing.T) {
	ctx := testCtx(t)
	for _, sql := range []string{
		// Kept across runs (-count > 1): phi_obs_reader holds a privilege.
		"DO $$BEGIN CREATE ROLE phi_obs_group NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$",
		"DO $$BEGIN CREATE ROLE phi_obs_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$",
		"GRANT phi_obs_group TO " + appUser, "GRANT phi_obs_reader TO " + appUser,
	} {
		if err := testCluster.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recorder{ended: make(chan struct{})}
	p := startProxy(t, WithObserver(rec))
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, "GRANT SELECT ON patients TO phi_obs_reader")
	simple := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	ext := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	values := []string{"123-45-6789", "987-65-4321"}
	mustExec(t, ctx, ext, "INSERT INTO patients (id, ssn) VALUES (1, $1), (2, $2)", values[0], values[1])
	rec.expect(t, "an extended INSERT",
		"end INSERT write public.patients public.patients.ssn role=app end_user= extended rows=2")

	const sel = "start SELECT read public.patients public.patients.ssn"
	const selEnd = "end SELECT read public.patients public.patients.ssn"
	t.Run("simple Query", func(t *testing.T) {
		var n int
		rows, err := simple.Query(ctx, "SELECT ssn FROM patients WHERE ssn = '123-45-6789' OR id = 2")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			n++
		}
		if rows.Err() != nil || n != 2 {
			t.Fatalf("%d rows, %v", n, rows.Err())
		}
		rec.expect(t, "a SELECT", sel+" role=app end_user=", selEnd+" role=app end_user= rows=2")
	})
	t.Run("extended Execute", func(t *testing.T) {
		var s string
		if err := ext.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 1).Scan(&s); err != nil {
			t.Fatal(err)
		}
		rec.expect(t, "a SELECT", sel+" role=app end_user= extended", selEnd+" role=app end_user= extended rows=1")
	})
	t.Run("a pipeline", func(t *testing.T) {
		b := &pgx.Batch{}
		b.Queue("SELECT ssn FROM patients WHERE id = $1", 1)
		b.Queue("UPDATE patients SET ssn = $1 WHERE id = $2", values[1], 2)
		b.Queue("SELECT ssn FROM patients WHERE id = $1", 2)
		if err := ext.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		rec.expect(t, "three statements up to one Sync",
			sel+" role=app end_user= extended", selEnd+" role=app end_user= extended rows=1",
			"end UPDATE write public.patients public.patients.ssn role=app end_user= extended rows=1",
			sel+" role=app end_user= extended", selEnd+" role=app end_user= extended rows=1")
	})
	t.Run("a row-limited Execute is suspended, the next one completes", func(t *testing.T) {
		fe := ext.PgConn().Frontend()
		fe.Send(&pgproto3.Parse{Name: "lim", Query: "SELECT ssn FROM patients ORDER BY id"})
		fe.Send(&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "lim"})
		fe.Send(&pgproto3.Execute{Portal: "p", MaxRows: 1})
		fe.Send(&pgproto3.Execute{Portal: "p"})
		fe.Send(&pgproto3.Close{ObjectType: 'S', Name: "lim"})
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		receiveUntilReady(t, fe)
		rec.expect(t, "two Executes of one portal",
			sel+" role=app end_user= extended", selEnd+" role=app end_user= extended rows=1 suspended",
			sel+" role=app end_user= extended", selEnd+" role=app end_user= extended rows=1")
	})
	t.Run("COPY TO and COPY FROM", func(t *testing.T) {
		var out strings.Builder
		if _, err := simple.PgConn().CopyTo(ctx, writerFunc(func(b []byte) { out.Write(b) }), "COPY patients (id, ssn) TO STDOUT"); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), values[0]) {
			t.Fatalf("COPY TO gave %q", out.String())
		}
		if _, err := simple.PgConn().CopyFrom(ctx, strings.NewReader("3\t111-11-1111\n4\t222-22-2222\n"), "COPY patients (id, ssn) FROM STDIN"); err != nil {
			t.Fatal(err)
		}
		rec.expect(t, "COPY out then in",
			"start COPY copy_out public.patients public.patients.ssn role=app end_user=",
			"end COPY copy_out public.patients public.patients.ssn role=app end_user= rows=2",
			"end COPY copy_in public.patients public.patients.ssn role=app end_user= rows=2")
		values = append(values, "111-11-1111", "222-22-2222")
	})
	t.Run("refused statements", func(t *testing.T) {
		_, err := simple.Exec(ctx, "SELECT secret FROM restricted")
		expectCode(t, err, "42501", "a denied column")
		_, err = ext.Exec(ctx, "SELECT secret FROM restricted WHERE id = $1", 1)
		expectCode(t, err, "42501", "a denied column")
		_, err = simple.Exec(ctx, "SELECT ssn FROM patients WHERE ssn LIKE '123%'")
		expectCode(t, err, "0A000", "LIKE on ciphertext")
		rec.expect(t, "refusals",
			"end SELECT read public.restricted public.restricted.secret role=app end_user= rows=0 error=42501 refused",
			"end SELECT read public.restricted public.restricted.secret role=app end_user= extended rows=0 error=42501 refused",
			"end  read public.patients  role=app end_user= rows=0 error=0A000 refused")
	})
	t.Run("a server error", func(t *testing.T) {
		_, err := simple.Exec(ctx, "SELECT ssn, 1/(id-id) FROM patients")
		expectCode(t, err, "22012", "division by zero")
		rec.expect(t, "an error before any row", selEnd+" role=app end_user= rows=0 error=22012")
	})
	t.Run("the identity follows SET ROLE and the end user", func(t *testing.T) {
		mustExec(t, ctx, simple, "SET ROLE phi_obs_reader")
		mustExec(t, ctx, simple, "SET phiproxy.end_user = 'dr.smith'")
		mustExec(t, ctx, simple, "SELECT ssn FROM patients WHERE id = 1")
		mustExec(t, ctx, simple, "SELECT ssn FROM patients WHERE id = 1 /*end_user='dr.tag'*/")
		mustExec(t, ctx, simple, "BEGIN; SET LOCAL phiproxy.end_user = 'dr.local'; SELECT ssn FROM patients WHERE id = 1; ROLLBACK")
		mustExec(t, ctx, simple, "RESET ROLE; SELECT ssn FROM patients WHERE id = 1")
		rec.expect(t, "identities",
			sel+" role=phi_obs_reader end_user=dr.smith", selEnd+" role=phi_obs_reader end_user=dr.smith rows=1",
			sel+" role=phi_obs_reader end_user=dr.tag", selEnd+" role=phi_obs_reader end_user=dr.tag rows=1",
			sel+" role=phi_obs_reader end_user=dr.local", selEnd+" role=phi_obs_reader end_user=dr.local rows=1",
			sel+" role=app end_user=dr.smith", selEnd+" role=app end_user=dr.smith rows=1")
		mustExec(t, ctx, simple, "RESET phiproxy.end_user")
		rec.take()
	})
	t.Run("Start can refuse: no row is released", func(t *testing.T) {
		rec.mu.Lock()
		rec.deny = "SELECT"
		rec.mu.Unlock()
		defer func() { rec.mu.Lock(); rec.deny = ""; rec.mu.Unlock() }()
		rows, err := ext.Query(ctx, "SELECT ssn FROM patients WHERE id = $1", 1)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		expectCode(t, rows.Err(), "42501", "the observer's refusal")
		if n != 0 {
			t.Fatalf("%d rows released", n)
		}
		rec.expect(t, "a refused Start", sel+" role=app end_user= extended", selEnd+" role=app end_user= extended rows=0 error=42501")
	})
	t.Run("the roles are the session's", func(t *testing.T) {
		c := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
		var s string
		if err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 1").Scan(&s); err != nil {
			t.Fatal(err)
		}
		rec.mu.Lock()
		seen := strings.Join(rec.seen, " ")
		rec.mu.Unlock()
		for _, r := range []string{"phi_obs_group", "phi_obs_reader", testCfg.Instance} {
			if !strings.Contains(seen, r) {
				t.Errorf("the observer never saw %q in the session's roles and instance", r)
			}
		}
		rec.take()
	})
	t.Run("a statement in flight when the session ends", func(t *testing.T) {
		c := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
		fe := c.PgConn().Frontend()
		fe.Send(&pgproto3.Query{String: "SELECT ssn FROM patients WHERE id = (SELECT 1 FROM pg_sleep(0.5))"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = c.PgConn().Conn().Close()
		select {
		case <-rec.ended:
		case <-time.After(10 * time.Second):
			t.Fatal("no End at the session's end")
		}
		rec.expect(t, "the session's end", selEnd+" role=app end_user= rows=0 session-ended")
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, s := range rec.seen {
		for _, v := range values {
			if strings.Contains(s, v) || strings.Contains(s, strings.ReplaceAll(v, "-", "")) {
				t.Fatalf("the observer was shown a value: %q", s)
			}
		}
	}
}

type writerFunc func([]byte)

func (f writerFunc) Write(b []byte) (int, error) { f(b); return len(b), nil }

// receiveUntilReady reads until ReadyForQuery, failing on an error.
func receiveUntilReady(t *testing.T, fe *pgproto3.Frontend) []pgproto3.BackendMessage {
	t.Helper()
	return receiveUntil(t, fe, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok })
}

// receiveUntil reads until a message until accepts (until sees each one
// as it arrives), failing on an error; it returns the messages before
// that one. pgproto3 reuses a message of a type for the next one.
func receiveUntil(t *testing.T, fe *pgproto3.Frontend, until func(pgproto3.BackendMessage) bool) []pgproto3.BackendMessage {
	t.Helper()
	var got []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("error %s: %s", m.Code, m.Message)
		}
		if until(msg) {
			return got
		}
		got = append(got, msg)
	}
}

func TestBumpDecisionEpochRebuildsAnOpenPortal(t *testing.T) {
	rec := &epochRecorder{}
	ctx, p := start(t, WithObserver(rec))
	conn := p.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES (1, $1), (2, $2)", "123-45-6789", "987-65-4321")
	fe := conn.PgConn().Frontend()
	fe.Send(&pgproto3.Parse{Name: "ep", Query: "SELECT ssn FROM patients ORDER BY id"})
	fe.Send(&pgproto3.Bind{DestinationPortal: "open", PreparedStatement: "ep"})
	fe.Send(&pgproto3.Execute{Portal: "open", MaxRows: 1})
	fe.Send(&pgproto3.Flush{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	read := func(until func(pgproto3.BackendMessage) bool) {
		receiveUntil(t, fe, func(msg pgproto3.BackendMessage) bool {
			if m, ok := msg.(*pgproto3.DataRow); ok {
				got = append(got, string(m.Values[0]))
			}
			return until(msg)
		})
	}
	read(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.PortalSuspended); return ok })
	// A policy reload or a lockdown between two Executes of the portal.
	if e := p.phi.BumpDecisionEpoch(); e != 1 {
		t.Fatalf("BumpDecisionEpoch = %d", e)
	}
	fe.Send(&pgproto3.Execute{Portal: "open", MaxRows: 1})
	fe.Send(&pgproto3.Close{ObjectType: 'S', Name: "ep"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	read(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok })
	if strings.Join(got, ",") != "123-45-6789,987-65-4321" {
		t.Fatalf("rows %q", got)
	}
	if e := rec.epochs(); e != "0,1" {
		t.Fatalf("the portal's Executes decrypted under epochs %s, want 0,1: the second must use a transform rebuilt after the bump", e)
	}
	// The prepared statement's cached transform is rebuilt too.
	var s string
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 1).Scan(&s); err != nil || s != "123-45-6789" {
		t.Fatalf("after the bump: %q, %v", s, err)
	}
	p.phi.BumpDecisionEpoch()
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 1).Scan(&s); err != nil || s != "123-45-6789" {
		t.Fatalf("after the bump: %q, %v", s, err)
	}
	if e := rec.epochs(); e != "0,1,1,2" {
		t.Fatalf("epochs %s, want 0,1,1,2", e)
	}
	// A config reload is a new decision too.
	if err := p.phi.Reload(ctx, testCfg); err != nil {
		t.Fatal(err)
	}
	if e := p.phi.DecisionEpoch(); e != 3 {
		t.Fatalf("after Reload the epoch is %d, want 3", e)
	}
}

// epochRecorder records the decision epoch of each Start.
type epochRecorder struct {
	mu sync.Mutex
	e  []string
}

func (r *epochRecorder) Start(ex *Execution) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.e = append(r.e, fmt.Sprint(ex.Epoch))
	return nil
}

func (r *epochRecorder) End(*Execution) {}

func (r *epochRecorder) epochs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.e, ",")
}

// sessionRecorder is a SessionObserver that records how sessions ended.
type sessionRecorder struct {
	recorder
	ends chan error
}

func (r *sessionRecorder) SessionEnd(_ *proxy.SessionInfo, err error) { r.ends <- err }

func TestSessionObserverSeesAutomaticLogoff(t *testing.T) {
	ctx := testCtx(t)
	cfg := *testCfg
	cfg.Limits.IdleInTransactionTimeout = 300 * time.Millisecond
	rec := &sessionRecorder{recorder: recorder{ended: make(chan struct{})}, ends: make(chan error, 1)}
	p := serveProxy(t, ctx, &cfg, WithObserver(rec))
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, c, "BEGIN")
	mustExec(t, ctx, c, "INSERT INTO patients (id, ssn) VALUES (77, '123-45-6789')")
	select {
	case err := <-rec.ends:
		if pe := pgerr.As(err); pe == nil || pe.Code != pgerr.IdleInTransactionTimeout {
			t.Fatalf("SessionEnd(%v), want FATAL 25P03", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no automatic logoff within 5s")
	}
	rec.expect(t, "the INSERT, then nothing pending at the logoff",
		"end INSERT write public.patients public.patients.ssn role=app end_user= rows=1")
	// The upstream transaction was rolled back.
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	var n int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM patients WHERE id = 77").Scan(&n); err != nil || n != 0 {
		t.Fatalf("uncommitted INSERT: %d rows, %v", n, err)
	}
}

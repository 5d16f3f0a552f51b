package proxy

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgerr"
)

// What an Interceptor and a session hook see of a session: its messages
// (to rewrite, refuse or observe), its identity and its end; and the
// session state they are told.

// shoutingInterceptor refuses simple queries that mention "forbidden",
// upper-cases every text value in DataRows, and counts Parse messages:
// rewrite, refuse and observe, in both directions.
type shoutingInterceptor struct {
	parses atomic.Int32
}

func (i *shoutingInterceptor) Intercepts() (MessageSet, MessageSet) {
	return Messages(MsgQuery, MsgParse), Messages(MsgDataRow)
}

func (i *shoutingInterceptor) ClientMessage(msg pgproto3.FrontendMessage, out *Out) error {
	switch m := msg.(type) {
	case *pgproto3.Query:
		if strings.Contains(m.String, "forbidden") {
			// The client waits for this Query's answer, so this is the
			// right point in the response stream.
			if err := out.ToClient(ErrorResponse(pgerr.New(pgerr.InsufficientPrivilege, "statement refused by policy").
				WithHint("Ask for access."))); err != nil {
				return err
			}
			status := byte('I')
			if out.State() == StateInTx {
				status = 'T'
			}
			return out.ToClient(&pgproto3.ReadyForQuery{TxStatus: status})
		}
	case *pgproto3.Parse:
		i.parses.Add(1)
	}
	return out.Forward(msg)
}

func (i *shoutingInterceptor) ServerMessage(msg pgproto3.BackendMessage, out *Out) error {
	row := msg.(*pgproto3.DataRow)
	for k, v := range row.Values {
		if v != nil {
			row.Values[k] = bytes.ToUpper(v)
		}
	}
	return out.Forward(row)
}

func (i *shoutingInterceptor) SessionEnd(error) {}

func TestInterceptor(t *testing.T) {
	ctx := testCtx(t)
	hook := &shoutingInterceptor{}
	var infos []*SessionInfo
	p := startProxy(t, proxyConfig(t, testCluster.Addr()), WithInterceptor(func(si *SessionInfo) Interceptor {
		infos = append(infos, si)
		return hook
	}))
	conn := connect(t, ctx, p.dsn("application_name=hooked", "options=-c%20DateStyle%3DSQL,DMY"))
	var s string
	if err := conn.QueryRow(ctx, "SELECT 'quiet' || $1::text", "ly").Scan(&s); err != nil {
		t.Fatal(err)
	}
	if s != "QUIETLY" || hook.parses.Load() == 0 {
		t.Fatalf("got %q with %d Parse seen", s, hook.parses.Load())
	}
	_, err := conn.Exec(ctx, "SELECT 'forbidden'", pgx.QueryExecModeSimpleProtocol)
	if sqlstate(err) != "42501" {
		t.Fatalf("got %v, want the refusal 42501", err)
	}
	// The session survives a refusal.
	if err := conn.QueryRow(ctx, "SELECT 'still here'", pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil || s != "STILL HERE" {
		t.Fatalf("after the refusal: %q, %v", s, err)
	}
	if len(infos) != 1 || infos[0].User != appUser || infos[0].Database != appDB || infos[0].ApplicationName != "hooked" || infos[0].Config == nil {
		t.Fatalf("session info %+v", infos)
	}
	t.Run("startup parameters are the client's", func(t *testing.T) {
		sp := infos[0].StartupParameters
		if sp["application_name"] != "hooked" || sp["options"] != "-c DateStyle=SQL,DMY" || sp["user"] != appUser {
			t.Fatalf("StartupParameters %v", sp)
		}
	})
	t.Run("server parameters are the upstream's after login", func(t *testing.T) {
		sp := infos[0].ServerParameters
		if sp["DateStyle"] != "SQL, DMY" || sp["client_encoding"] != "UTF8" || sp["standard_conforming_strings"] != "on" ||
			sp["TimeZone"] == "" || sp["server_version"] != conn.PgConn().ParameterStatus("server_version") {
			t.Fatalf("ServerParameters %v", sp)
		}
	})
}

func TestStateTransitions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cur, tx State
		ev      event
		want    State
	}{
		{"login ends in idle", StateStartup, StateStartup, event{kind: evReady, status: 'I'}, StateIdle},
		{"BEGIN opens a transaction", StateIdle, StateIdle, event{kind: evReady, status: 'T'}, StateInTx},
		{"an error fails it", StateInTx, StateInTx, event{kind: evReady, status: 'E'}, StateFailedTx},
		{"an extended error skips to Sync", StateInTx, StateInTx, event{kind: evError, extended: true}, StateSkipTillSync},
		{"a simple error waits for ReadyForQuery", StateIdle, StateIdle, event{kind: evError}, StateIdle},
		{"Sync ends the skipping", StateSkipTillSync, StateInTx, event{kind: evReady, status: 'E'}, StateFailedTx},
		{"COPY FROM STDIN", StateIdle, StateIdle, event{kind: evCopyIn}, StateCopyIn},
		{"COPY TO STDOUT", StateInTx, StateInTx, event{kind: evCopyOut}, StateCopyOut},
		{"COPY ends back in the transaction", StateCopyOut, StateInTx, event{kind: evCopyEnd}, StateInTx},
		{"a COPY error ends the copy", StateCopyIn, StateIdle, event{kind: evError}, StateIdle},
		{"close from anywhere", StateCopyIn, StateIdle, event{kind: evClose}, StateClosed},
		{"closed stays closed", StateClosed, StateIdle, event{kind: evReady, status: 'I'}, StateClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := transition(tc.cur, tc.tx, tc.ev); got != tc.want {
				t.Fatalf("transition(%v, %v, %+v) = %v, want %v", tc.cur, tc.tx, tc.ev, got, tc.want)
			}
		})
	}
	if StateSkipTillSync.String() != "SkipTillSync" || State(42).String() != "State(42)" {
		t.Fatal("State.String")
	}
}

// The session hook sees each logged-in pass-through session once, with its
// SessionInfo complete, and its end once.
func TestSessionHookSeesStartAndEnd(t *testing.T) {
	ctx := testCtx(t)
	var mu sync.Mutex
	var started, ended int
	var user string
	hook := func(info *SessionInfo) func() {
		mu.Lock()
		started++
		user = info.User
		mu.Unlock()
		return func() { mu.Lock(); ended++; mu.Unlock() }
	}
	p := startProxy(t, proxyConfig(t, testCluster.Addr()), WithSessionHook(hook))
	for i := 0; i < 3; i++ {
		c := connect(t, ctx, p.dsn())
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	var s, e int
	var u string
	if !testenv.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		mu.Lock()
		defer mu.Unlock()
		s, e, u = started, ended, user
		return s == 3 && e == 3 && u == appUser
	}) {
		t.Fatalf("started %d, ended %d, user %q; want 3, 3, %q", s, e, u, appUser)
	}
}

// lifecycleInterceptor records what an Interceptor learns of its session:
// the identity in SessionInfo, the session's context and the end call. A
// DataRow whose first value is "block" waits for the context, as a write
// to a stalled audit sink would.
type lifecycleInterceptor struct {
	info *SessionInfo

	mu       sync.Mutex
	seen     []Identity // Identity() as the server goroutine read it, per DataRow
	afterEnd bool       // a message method ran after SessionEnd
	ended    int
	endErr   error
	ctxDone  bool // the context was cancelled when SessionEnd ran
	blocked  chan struct{}
	unblock  chan error
	endCh    chan struct{}
}

func (i *lifecycleInterceptor) Intercepts() (MessageSet, MessageSet) {
	return Messages(MsgQuery), Messages(MsgDataRow)
}

func (i *lifecycleInterceptor) ClientMessage(msg pgproto3.FrontendMessage, out *Out) error {
	i.check()
	if q := msg.(*pgproto3.Query); strings.Contains(q.String, "as dr.who") {
		// Published by one goroutine, read by the other.
		out.Session().SetIdentity(Identity{Role: appUser, EndUser: "dr.who"})
	}
	return out.ForwardUnchanged()
}

func (i *lifecycleInterceptor) ServerMessage(msg pgproto3.BackendMessage, out *Out) error {
	i.check()
	row := msg.(*pgproto3.DataRow)
	i.mu.Lock()
	i.seen = append(i.seen, out.Session().Identity())
	i.mu.Unlock()
	if len(row.Values) > 0 && string(row.Values[0]) == "block" {
		close(i.blocked)
		select {
		case <-out.Session().Context().Done():
			i.unblock <- nil
			return out.Session().Context().Err()
		case <-time.After(20 * time.Second):
			i.unblock <- errors.New("the session's context was not cancelled")
			return nil
		}
	}
	return out.ForwardUnchanged()
}

func (i *lifecycleInterceptor) check() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.ended > 0 {
		i.afterEnd = true
	}
}

func (i *lifecycleInterceptor) SessionEnd(err error) {
	i.mu.Lock()
	i.ended++
	i.endErr = err
	i.ctxDone = i.info.Context().Err() != nil
	i.mu.Unlock()
	close(i.endCh)
}

func TestInterceptorSeesIdentityAndSessionEnd(t *testing.T) {
	ctx := testCtx(t)
	// app ∈ phi_test_inner ∈ phi_test_outer: memberships are nested.
	for _, sql := range []string{
		"DROP ROLE IF EXISTS phi_test_inner", "DROP ROLE IF EXISTS phi_test_outer",
		"CREATE ROLE phi_test_outer NOLOGIN", "CREATE ROLE phi_test_inner NOLOGIN IN ROLE phi_test_outer",
		"GRANT phi_test_inner TO " + appUser,
	} {
		if err := testCluster.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	hooks := make(chan *lifecycleInterceptor, 2)
	cfg := proxyConfig(t, testCluster.Addr(), "instance: px-test-1")
	p := startProxy(t, cfg, WithInterceptor(func(si *SessionInfo) Interceptor {
		h := &lifecycleInterceptor{info: si, blocked: make(chan struct{}), unblock: make(chan error, 1), endCh: make(chan struct{})}
		hooks <- h
		return h
	}))
	conn := connect(t, ctx, p.dsn())
	h := <-hooks // built after the client's ReadyForQuery

	t.Run("the identity is the session's", func(t *testing.T) {
		info := h.info
		if want := []string{appUser, "phi_test_inner", "phi_test_outer"}; !slices.Equal(info.Roles, want) {
			t.Errorf("Roles = %v, want %v", info.Roles, want)
		}
		if info.Instance != "px-test-1" {
			t.Errorf("Instance = %q", info.Instance)
		}
		if info.ClientAddr == nil || info.ClientAddr.String() != conn.PgConn().Conn().LocalAddr().String() {
			t.Errorf("ClientAddr = %v, want the client's %v", info.ClientAddr, conn.PgConn().Conn().LocalAddr())
		}
		if id := info.Identity(); id != (Identity{Role: appUser}) {
			t.Errorf("Identity() at the start = %+v", id)
		}
	})
	t.Run("an identity published on one goroutine is read on the other", func(t *testing.T) {
		var s string
		if err := conn.QueryRow(ctx, "SELECT 'as dr.who'", pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		seen := slices.Clone(h.seen)
		h.mu.Unlock()
		if len(seen) != 1 || seen[0] != (Identity{Role: appUser, EndUser: "dr.who"}) {
			t.Fatalf("the server goroutine saw %+v", seen)
		}
	})
	t.Run("the session's end cancels a blocked call, then SessionEnd runs once", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT 'block'", pgx.QueryExecModeSimpleProtocol)
			done <- err
		}()
		select {
		case <-h.blocked:
		case <-ctx.Done():
			t.Fatal("the row never reached the interceptor")
		}
		h.mu.Lock()
		if h.ended != 0 || h.info.Context().Err() != nil {
			t.Errorf("ended early: SessionEnd calls %d, context %v", h.ended, h.info.Context().Err())
		}
		h.mu.Unlock()
		// The client goes away while the server goroutine is blocked.
		_ = conn.PgConn().Conn().Close()
		if err := <-h.unblock; err != nil {
			t.Fatal(err)
		}
		<-done
		select {
		case <-h.endCh:
		case <-time.After(10 * time.Second):
			t.Fatal("SessionEnd was not called")
		}
		time.Sleep(50 * time.Millisecond) // a late message call would show now
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.ended != 1 || !h.ctxDone || h.afterEnd {
			t.Fatalf("SessionEnd calls %d, context cancelled before it %v, message after it %v", h.ended, h.ctxDone, h.afterEnd)
		}
		if h.endErr != nil {
			t.Fatalf("a client that went away ends the session without an error, got %v", h.endErr)
		}
	})
	t.Run("a session ended by the proxy passes its error to SessionEnd", func(t *testing.T) {
		c2 := connect(t, ctx, p.dsn())
		h2 := <-hooks
		execDone := make(chan struct{})
		defer func() { <-execDone }()
		go func() {
			defer close(execDone)
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = c2.Exec(sctx, "SELECT 'block'", pgx.QueryExecModeSimpleProtocol)
		}()
		<-h2.blocked
		if err := p.srv.Close(); err != nil {
			t.Fatal(err)
		}
		<-h2.unblock
		<-h2.endCh
		h2.mu.Lock()
		defer h2.mu.Unlock()
		if pe := pgerr.As(h2.endErr); pe == nil || pe.Code != pgerr.AdminShutdown {
			t.Fatalf("SessionEnd(%v), want 57P01", h2.endErr)
		}
	})
}

func TestRoleLookupFailureEndsTheLogin(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()),
		WithInterceptor(func(*SessionInfo) Interceptor { return &shoutingInterceptor{} }),
		WithRoleLookup(func(context.Context, string) ([]string, error) { return nil, errors.New("catalog down") }))
	_, err := pgx.Connect(ctx, p.dsn())
	if sqlstate(err) != "08006" || !strings.Contains(err.Error(), "role memberships") {
		t.Fatalf("connect: %v, want FATAL 08006 naming the role memberships", err)
	}
}

package proxy

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

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

package proxy

import (
	"sync"
	"testing"
	"time"
)

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
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		s, e, u := started, ended, user
		mu.Unlock()
		if s == 3 && e == 3 && u == appUser {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("started %d, ended %d, user %q; want 3, 3, %q", s, e, u, appUser)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

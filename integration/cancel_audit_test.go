package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
)

// Cancel requests are audited: a guessed key (nothing cancelled) and a
// real cancel (forwarded), each with the client's address.
func TestCancelRequestsAudited(t *testing.T) {
	p := startPHIProxy(t)
	// A guessed key.
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	req := make([]byte, 16)
	binary.BigEndian.PutUint32(req[0:], 16)
	binary.BigEndian.PutUint32(req[4:], 80877102)
	binary.BigEndian.PutUint32(req[8:], 4242)
	binary.BigEndian.PutUint32(req[12:], 0xdeadbeef)
	c.Write(req)
	c.Close()
	// A real cancel of a running statement.
	conn, err := pgx.Connect(context.Background(), appDSN(p.addr(), phiDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := conn.Exec(ctx, "SELECT pg_sleep(10)"); err == nil || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("the sleep was not cancelled: %v", err)
	}
	dir := filepath.Join(filepath.Dir(p.config), "audit")
	deadline := time.Now().Add(5 * time.Second)
	for {
		var denied, allowed bool
		segs, _ := audit.Segments(dir)
		r := audit.NewReader(segs)
		for r.Next() {
			ev, err := audit.Parse(r.Line().Bytes)
			if err != nil || ev.Action != audit.ActionCancel || !strings.HasPrefix(ev.Client, "127.0.0.1:") {
				continue
			}
			denied = denied || ev.Decision == audit.DecisionDenied
			allowed = allowed || ev.Decision == audit.DecisionAllowed
		}
		r.Close()
		if denied && allowed {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(segs[len(segs)-1].Path)
			t.Fatalf("cancel events: denied %v, forwarded %v\n%s", denied, allowed, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

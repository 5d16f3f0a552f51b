package proxy

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// TestFailedLoginsLogClippedAndRateLimited: a second review saw every
// failed login log the client's whole application_name (9 KB a try) at
// INFO with no limit (issue 18). A burst of failures from one host logs
// a few clipped lines; the rest are counted.
func TestFailedLoginsLogClippedAndRateLimited(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	app := strings.Repeat("A", 8000)
	user := "u" + strings.Repeat("B", 1500)
	const tries = 30
	for i := 0; i < tries; i++ {
		dsn := "postgres://" + user + ":wrong@" + p.addr + "/" + testenv.AppDB + "?sslmode=disable&application_name=" + app
		_, err := pgconn.Connect(ctx, dsn)
		if code := sqlstate(err); code != "28P01" {
			t.Fatalf("try %d: %v, want 28P01", i, err)
		}
	}
	logs := p.logs.String()
	if n := logLines(logs, "connection failed"); n == 0 || n > failureBurst {
		t.Errorf("%d failed logins from one host logged %d lines, want 1..%d", tries, n, failureBurst)
	}
	if strings.Contains(logs, strings.Repeat("A", logValueMax+1)) || strings.Contains(logs, strings.Repeat("B", logValueMax+1)) {
		t.Errorf("a client-supplied string reached the log unclipped (%d bytes of log)", len(logs))
	}
	if len(logs) > 16<<10 {
		t.Errorf("%d failed logins wrote %d bytes of log", tries, len(logs))
	}
}

func TestFailureLogBurstAggregateAndWindow(t *testing.T) {
	var f failureLog
	a := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5000}
	b := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5001} // same host, other port
	other := &net.TCPAddr{IP: net.IPv4(10, 9, 9, 9), Port: 1}
	t0 := time.Unix(1000, 0)
	logged := 0
	for i := 0; i < failureBurst; i++ {
		if ok, _ := f.note(a, t0); ok {
			logged++
		}
	}
	if logged != failureBurst {
		t.Fatalf("burst logged %d", logged)
	}
	if ok, _ := f.note(b, t0); ok {
		t.Fatal("another port of the same host is not rate-limited")
	}
	if ok, _ := f.note(other, t0); !ok {
		t.Fatal("another host is rate-limited")
	}
	// The aggregate line reports what was suppressed.
	var agg int
	for i := 0; i < failureAggregate; i++ {
		if ok, n := f.note(a, t0.Add(time.Second)); ok {
			agg = n
			break
		}
	}
	if agg != failureAggregate-1 {
		t.Fatalf("aggregate line reports %d suppressed, want %d", agg, failureAggregate-1)
	}
	// A new window logs again, with what was suppressed since.
	f.note(a, t0.Add(2*time.Second))
	if ok, n := f.note(a, t0.Add(failureWindow+3*time.Second)); !ok || n != 1 {
		t.Fatalf("new window: log=%v suppressed=%d", ok, n)
	}
	// The hosts tracked are bounded.
	for i := 0; i < 3*failureHosts; i++ {
		f.note(&net.TCPAddr{IP: net.IPv4(11, byte(i>>16), byte(i>>8), byte(i))}, t0)
	}
	if n := len(f.byHost); n > failureHosts+1 {
		t.Fatalf("%d hosts tracked", n)
	}
}

func TestClipKeepsUTF8(t *testing.T) {
	s := strings.Repeat("é", 100) // 2 bytes each
	c := clip(s)
	if !strings.HasPrefix(c, strings.Repeat("é", logValueMax/2)) || !strings.HasSuffix(c, "…(200 bytes)") {
		t.Fatalf("clip: %q", c)
	}
	if clip("short") != "short" {
		t.Fatal("clip changed a short string")
	}
}

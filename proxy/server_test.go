package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

func TestRetryableAccept(t *testing.T) {
	wrap := func(errno syscall.Errno) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{wrap(syscall.EMFILE), true},
		{wrap(syscall.ENFILE), true},
		{wrap(syscall.ENOBUFS), true},
		{os.ErrDeadlineExceeded, true},
		{wrap(syscall.EINVAL), false},
		{net.ErrClosed, false},
		{errors.New("listener broke"), false},
	} {
		if got := retryableAccept(tc.err); got != tc.want {
			t.Errorf("retryableAccept(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// acceptChildEnv makes the test binary the child of
// TestAcceptOutOfFileDescriptors: a proxy with few file descriptors.
const acceptChildEnv = "PHIPROXY_TEST_ACCEPT_CHILD"

// TestAcceptOutOfFileDescriptors: a proxy that runs out of file
// descriptors (RLIMIT_NOFILE, in a child process) because of idle
// unauthenticated connections keeps accepting once some of them go, and
// serves a session; Serve does not return.
func TestAcceptOutOfFileDescriptors(t *testing.T) {
	if os.Getenv(acceptChildEnv) != "" {
		acceptChild(t)
		return
	}
	ctx := testCtx(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptOutOfFileDescriptors$", "-test.count=1")
	cmd.Env = append(os.Environ(), acceptChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testenv.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	exited := make(chan struct{}) // closed when the child has ended, with exitErr set
	var exitErr error
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "addr="); ok {
				addrc <- a
			}
		}
		exitErr = cmd.Wait()
		close(exited)
	}()
	defer func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("child's log:\n%s", stderr.String())
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-exited:
		t.Fatalf("the child ended: %v", exitErr)
	case <-time.After(20 * time.Second):
		t.Fatal("the child did not start")
	}

	// More idle connections than the child has descriptors for.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "accept failed") {
		select {
		case <-exited:
			t.Fatalf("the proxy ended when it ran out of descriptors: %v", exitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy never ran out of descriptors: the test proves nothing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	firstWarning := time.Now()
	time.Sleep(1500 * time.Millisecond) // through a few back-offs up to the 1s cap
	for _, c := range idle[:90] {
		c.Close()
	}
	idle = idle[90:]

	// The child frees its descriptors as it notices the closed clients
	// (and accepts the closed ones still queued): a session may need a few
	// tries before one of its own fits.
	var sessionErr error
	for try := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		var conn *pgconn.PgConn
		if conn, sessionErr = pgconn.Connect(ctx, testenv.AppDSN(addr)); sessionErr == nil {
			_, sessionErr = conn.Exec(ctx, "SELECT 1").ReadAll()
			conn.Close(ctx)
		}
		if sessionErr == nil || time.Since(try) > 10*time.Second {
			break
		}
	}
	if sessionErr != nil {
		t.Fatalf("no session after descriptors were freed: %v", sessionErr)
	}
	select {
	case <-exited:
		t.Fatalf("the child ended: %v", exitErr)
	default:
	}
	// At most one warning a second (and one more for each edge).
	if n, secs := logLines(stderr.String(), "accept failed"), time.Since(firstWarning).Seconds(); n > int(secs)+3 {
		t.Errorf("%d accept warnings in %.1f seconds: not rate-limited", n, secs)
	}
}

// acceptChild runs a proxy (relay mode, in front of a scripted upstream)
// with at most 48 file descriptors, prints its address, and serves until
// its stdin closes.
func acceptChild(t *testing.T) {
	up := testenv.ScriptedServer(t, func(c net.Conn, be *pgproto3.Backend) {
		for msg := range trustedSession(c, be) {
			if _, ok := msg.(*pgproto3.Query); ok {
				_, _ = c.Write(append(frame('C', []byte("SELECT 0\x00")), frame('Z', []byte{'I'})...))
			}
		}
	})
	srv, err := New(proxyConfig(t, up, "auth: {mode: relay}"), WithLogger(slog.New(slog.NewJSONHandler(os.Stderr, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = 48
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := srv.Serve(context.Background(), ln)
		fmt.Fprintln(os.Stderr, "Serve returned:", err)
		os.Exit(3)
	}()
	fmt.Printf("addr=%s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// TestMaxConnections: over limits.max_connections a client gets
// PostgreSQL's own answer, FATAL 53300, after SSL negotiation and its
// startup packet, as from PostgreSQL; cancel requests still work; once a
// session ends, a new one is admitted.
func TestMaxConnections(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr(), "limits: {max_connections: 2}"))
	first := connect(t, ctx, p.dsn())
	second := connect(t, ctx, p.dsn())

	_, err := pgx.Connect(ctx, p.dsn())
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" || pe.Severity != "FATAL" || pe.Message != "sorry, too many clients already" {
		t.Fatalf("third connection: %v, want FATAL 53300", err)
	}

	// On the wire: SSLRequest is answered as usual, the refusal comes
	// after the StartupMessage.
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'N' {
		t.Fatalf("SSLRequest answered %q, %v; want N", b, err)
	}
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": appUser, "database": appDB}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "53300" {
		t.Fatalf("got %#v, %v; want ErrorResponse 53300", msg, err)
	}

	// A CancelRequest over the cap still reaches its session.
	done := make(chan error, 1)
	go func() {
		_, err := first.Exec(ctx, "SELECT pg_sleep(10)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := first.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if sqlstate(err) != "57014" {
			t.Fatalf("cancelled query: %v, want 57014", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancel over the cap was not forwarded")
	}

	second.Close(ctx)
	waitFor(t, func() bool { return p.srv.Sessions() == 1 }, "the second session to end")
	third := connect(t, ctx, p.dsn())
	var n int
	if err := third.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

func TestServeUsage(t *testing.T) {
	env := wantUsageErrors(t, runServe, nil, []string{"--config"}, []string{"--config", "x.yaml", "extra"}, []string{"--nope"})
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("listen: 127.0.0.1:0\nbogus: 1\n"), 0o600)
	var u usageError
	if err := runServe(context.Background(), env, []string{"--config", bad}); !errors.As(err, &u) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("a bad config gave %v, want a usage error naming the key", err)
	}
}

func TestServeRunsReloadsAndDrains(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "phiproxy.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good := "listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://c@127.0.0.1:1/db\nauth: {mode: relay}\nlimits: {drain_timeout: 1s}\n"
	write(good)
	srv := startServe(t, cfgPath)
	waitLog := srv.waitLog
	addr := waitLog("listening")["addr"].(string)

	// It serves: a client's SSLRequest is answered (N: client_tls disabled).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != 'N' {
		t.Fatalf("SSLRequest answered %q, %v", b[0], err)
	}
	c.Close()

	write(good + "# edited\n")
	srv.reload("config reloaded")
	write("listen: [\n")
	srv.reload("config reload failed; keeping the running config")

	srv.stop()
	waitLog("stopped")
}

// TestServeKeepsMockSecret: with auth terminate, serve creates the secret
// of unknown roles' mock salts in state_dir (0600) and reads the same one
// back on the next start.
func TestServeKeepsMockSecret(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "phiproxy.yaml")
	cfg := "listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://c@127.0.0.1:1/db\nstate_dir: st\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	secretPath := filepath.Join(dir, "st", "mock_auth_secret")
	serveOnce := func() []byte {
		t.Helper()
		stderr := &testenv.Buffer{}
		env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: stderr}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- runServe(ctx, env, []string{"--config", cfgPath}) }()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(stderr.String(), `"msg":"listening"`) {
			if time.Now().After(deadline) {
				t.Fatalf("serve did not start:\n%s", stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
		st, err := os.Stat(secretPath)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", secretPath, st, err)
		}
		b, _ := os.ReadFile(secretPath)
		return b
	}
	first := serveOnce()
	if again := serveOnce(); len(first) < 64 || !bytes.Equal(first, again) {
		t.Fatalf("secret %q, then %q", first, again)
	}
}

// TestServeExitsOneWhenPostgreSQLIsUnreachable: PostgreSQL down at start is
// a failure at run time (exit 1), not a usage or config error (exit 2).
func TestServeExitsOneWhenPostgreSQLIsUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	cfgPath := filepath.Join(t.TempDir(), "phiproxy.yaml")
	cfg := "listen: 127.0.0.1:0\nupstream: {address: " + closed + ", sslmode: disable}\n" +
		"catalog_dsn: postgres://c@" + closed + "/db?sslmode=disable&connect_timeout=5\n" +
		"phi:\n  public.patients:\n    ssn: {type: text, mode: deterministic}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr := &bytes.Buffer{}
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: stderr}
	err = run(context.Background(), env, []string{"serve", "--config", cfgPath})
	if code := exitCode(env, err); code != 1 {
		t.Fatalf("exit %d (%v), want 1", code, err)
	}
	if !strings.Contains(stderr.String(), "catalog connection") {
		t.Errorf("the error does not say what failed: %s", stderr.String())
	}
}

// TestServeExitsOneWhenItCannotListen: an address in use is a failure at
// run time too.
func TestServeExitsOneWhenItCannotListen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfgPath := filepath.Join(t.TempDir(), "phiproxy.yaml")
	cfg := "listen: " + ln.Addr().String() + "\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://c@127.0.0.1:1/db\nauth: {mode: relay}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	err = run(context.Background(), env, []string{"serve", "--config", cfgPath})
	if code := exitCode(env, err); code != 1 {
		t.Fatalf("exit %d (%v), want 1", code, err)
	}
}

// serving is one runServe started in the background by startServe, with
// its log captured.
type serving struct {
	t      *testing.T
	stderr *testenv.Buffer
	cancel context.CancelFunc
	done   chan error
}

// startServe runs serve --config cfgPath until the test ends or stop is
// called.
func startServe(t *testing.T, cfgPath string) *serving {
	t.Helper()
	s := &serving{t: t, stderr: &testenv.Buffer{}, done: make(chan error, 1)}
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: s.stderr}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	t.Cleanup(cancel)
	go func() { s.done <- runServe(ctx, env, []string{"--config", cfgPath}) }()
	return s
}

// waitLog waits up to 10s for a log record with this msg and returns it.
func (s *serving) waitLog(msg string) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(s.stderr.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return rec
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("no %q in the log:\n%s", msg, s.stderr.String())
	return nil
}

// reload sends the process SIGHUP, as an operator does to make serve
// re-read its config, and waits for the log record msg.
func (s *serving) reload(msg string) map[string]any {
	s.t.Helper()
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	return s.waitLog(msg)
}

// stop cancels serve and fails the test unless it returns nil within 10s.
func (s *serving) stop() {
	s.t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Fatalf("serve ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		s.t.Fatal("serve did not stop after its context was cancelled")
	}
}

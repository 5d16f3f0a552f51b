package admin

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

const testToken = "s3cret-admin-token"

// writeToken writes a token file with mode perm.
func writeToken(t *testing.T, content string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

// startAdmin serves an admin server until the test ends; it returns its
// base URL.
func startAdmin(t *testing.T, m *Metrics, ready Readiness) (*Server, string) {
	t.Helper()
	s, err := New(&config.Admin{Listen: "127.0.0.1:0", TokenFile: writeToken(t, testToken+"\n", 0o600)}, m, ready, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

// closedAddr is an address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestTokenIsRequired(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0") // an upstream that accepts
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	srv, base := startAdmin(t, NewMetrics(nil), Readiness{Upstream: up.Addr().String()})

	if code, body := testenv.HTTPGet(t, nil, base+"/healthz", ""); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz without a token: %d %q; want 200 ok", code, body)
	}
	for _, path := range []string{"/metrics", "/readyz", "/lockdown", "/nothing"} {
		for _, auth := range []string{"", "Bearer", "Bearer wrong", "Bearer " + testToken + "x", "Bearer " + testToken[:5], "Basic " + testToken, testToken} {
			if code, body := testenv.HTTPGet(t, nil, base+path, auth); code != http.StatusUnauthorized || strings.Contains(body, "phiproxy_") {
				t.Errorf("%s with Authorization %q: %d; want 401 and nothing of the endpoint", path, auth, code)
			}
		}
	}
	good := "Bearer " + testToken
	if code, body := testenv.HTTPGet(t, nil, base+"/metrics", good); code != 200 || !strings.Contains(body, "phiproxy_sessions_total") {
		t.Errorf("/metrics with the token: %d\n%s", code, body)
	}
	if code, body := testenv.HTTPGet(t, nil, base+"/readyz", good); code != 200 || !strings.Contains(body, `"ready":true`) {
		t.Errorf("/readyz with the token and the upstream up: %d %s", code, body)
	}
	srv.Draining()
	if code, body := testenv.HTTPGet(t, nil, base+"/readyz", good); code != 503 || !strings.Contains(body, `"draining"`) {
		t.Errorf("/readyz while draining: %d %s; want 503", code, body)
	}
	if code, _ := testenv.HTTPGet(t, nil, base+"/nothing", good); code != 404 {
		t.Errorf("unknown path with the token: %d; want 404", code)
	}
}

// SIGHUP re-reads the token file: the new token works, the old one no
// longer does; a token file that became readable keeps the old token.
func TestReloadToken(t *testing.T) {
	path := writeToken(t, "old-token", 0o600)
	s, err := New(&config.Admin{Listen: "127.0.0.1:0", TokenFile: path}, nil, Readiness{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("new-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadToken(); err != nil {
		t.Fatal(err)
	}
	if tok := s.token.Load(); !tok.matches([]byte("new-token")) || tok.matches([]byte("old-token")) {
		t.Error("after ReloadToken: want the new token only")
	}
	os.Chmod(path, 0o644)
	if err := s.ReloadToken(); err == nil {
		t.Error("a group-readable token file was accepted on reload")
	}
	if !s.token.Load().matches([]byte("new-token")) {
		t.Error("a failed reload dropped the token in force")
	}
}

func TestReadyzFailsClosed(t *testing.T) {
	status := phi.Status{PHI: true, KeysLoaded: true, CatalogRead: time.Now().Add(-time.Hour)}
	_, base := startAdmin(t, nil, Readiness{Upstream: closedAddr(t), Status: func() phi.Status { return status }, CatalogMaxAge: time.Minute})
	code, body := testenv.HTTPGet(t, nil, base+"/readyz", "Bearer "+testToken)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"upstream":"unreachable`) || !strings.Contains(body, "catalog_max_age") || !strings.Contains(body, `"keys":"ok"`) {
		t.Errorf("/readyz with the upstream down and an old catalog: %d %s; want 503 naming both", code, body)
	}
	if code, _ := testenv.HTTPGet(t, nil, base+"/metrics", "Bearer "+testToken); code != 404 {
		t.Errorf("/metrics without Metrics: %d; want 404", code)
	}
}

func TestTokenFile(t *testing.T) {
	if _, err := LoadToken(writeToken(t, "  tok\n", 0o600)); err != nil {
		t.Errorf("0600: %v", err)
	}
	if _, err := LoadToken(writeToken(t, "tok", 0o400)); err != nil {
		t.Errorf("0400: %v", err)
	}
	for _, perm := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		if _, err := LoadToken(writeToken(t, "tok", perm)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: %v; want a refusal saying chmod 600", perm, err)
		}
	}
	if _, err := LoadToken(writeToken(t, " \n", 0o600)); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty token: %v", err)
	}
	if _, err := LoadToken(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := loadToken(writeToken(t, "tok", 0o600), os.Getuid()+1); err == nil || !strings.Contains(err.Error(), "owned") {
		t.Errorf("another owner: %v", err)
	}
	tok, _ := LoadToken(writeToken(t, "tok\n", 0o600))
	if !tok.matches([]byte("tok")) || tok.matches([]byte("tok2")) || tok.matches(nil) {
		t.Error("matches: the trimmed token only")
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// serve runs the admin API beside the proxy when admin is configured,
// counts reloads, and shuts it down with the proxy.
func TestServeAdminAPI(t *testing.T) {
	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenPath, []byte("tok-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "phiproxy.yaml")
	good := "listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://c@127.0.0.1:1/db\nauth: {mode: relay}\nlimits: {drain_timeout: 1s}\nadmin: {listen: \"127.0.0.1:0\", token_file: admin.token}\n"
	if err := os.WriteFile(cfgPath, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, cfgPath)
	waitLog := srv.waitLog
	base := "http://" + waitLog("admin API listening")["addr"].(string)
	get := func(path, auth string) (int, string) {
		t.Helper()
		return testenv.HTTPGet(t, nil, base+path, auth)
	}
	if code, _ := get("/healthz", ""); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, _ := get("/metrics", ""); code != 401 {
		t.Errorf("/metrics without the token: %d", code)
	}
	if code, _ := get("/metrics", "Bearer wrong"); code != 401 {
		t.Errorf("/metrics with a wrong token: %d", code)
	}
	// The upstream (127.0.0.1:1) is down: not ready, and it says why.
	if code, body := get("/readyz", "Bearer tok-123"); code != 503 || !strings.Contains(body, "upstream") {
		t.Errorf("/readyz: %d %s", code, body)
	}
	// SIGHUP re-reads the token file: rotation needs no restart.
	if err := os.WriteFile(tokenPath, []byte("tok-456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.reload("config reloaded")
	var code int
	var body string
	if !testenv.Eventually(5*time.Second, 20*time.Millisecond, func() bool {
		code, body = get("/metrics", "Bearer tok-456")
		return code == 200 && strings.Contains(body, `phiproxy_config_reloads_total{result="ok"} 1`)
	}) {
		t.Fatalf("/metrics with the rotated token: %d\n%s", code, body)
	}
	if code, _ := get("/metrics", "Bearer tok-123"); code != 401 {
		t.Errorf("/metrics with the token before rotation: %d; want 401", code)
	}

	srv.stop()
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the admin API still answers after serve returned")
	}
}

// A token file that group or others can read is a config error (exit 2).
func TestServeRefusesAReadableToken(t *testing.T) {
	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenPath, []byte("tok"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(tokenPath, 0o644)
	cfgPath := filepath.Join(dir, "phiproxy.yaml")
	cfg := "listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://c@127.0.0.1:1/db\nauth: {mode: relay}\nadmin: {token_file: admin.token}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	err := runServe(context.Background(), env, []string{"--config", cfgPath})
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("got %v; want a usage error saying chmod 600", err)
	}
}

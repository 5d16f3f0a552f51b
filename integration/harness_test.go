package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// env is the package-wide fixture: one cluster, one phiproxy binary.
type env struct {
	cluster  *pgcluster.Cluster
	binary   string
	work     string
	pgpass   string
	certFile string // the proxy's client-leg certificate (localhost, 127.0.0.1)
	keyFile  string
}

var fixture *env // set once by TestMain, read-only afterwards

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "phiproxy-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	bin := filepath.Join(work, "phiproxy")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/phiproxy")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build phiproxy: %v\n%s", err, out)
		return 2
	}
	c, err := pgcluster.Start(ctx, pgcluster.Options{HBA: []string{"host all md5user 127.0.0.1/32 md5"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer c.Stop()
	e := &env{cluster: c, binary: bin, work: work}
	if e.pgpass, err = c.WritePgpass(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if e.certFile, e.keyFile, err = c.CA.Issue("localhost", "127.0.0.1"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, q := range []string{setupSQL, "CREATE DATABASE clinic OWNER app"} {
		if err := c.Exec(ctx, q); err != nil {
			fmt.Fprintln(os.Stderr, "setup:", err)
			return 2
		}
	}
	fixture = e
	return m.Run()
}

// Roles every test can use. Passwords are test-only.
const setupSQL = `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE ROLE nologin_user NOLOGIN PASSWORD 'nl-pw';
CREATE ROLE expired_user LOGIN PASSWORD 'ex-pw' VALID UNTIL '2001-01-01';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD 'md5-pw';
RESET password_encryption;
`

// proxyOpts are the knobs tests turn on the proxy's config.
type proxyOpts struct {
	clientTLS    string // disable | allow | require
	upstreamSSL  string // sslmode towards PostgreSQL
	authMode     string // terminate | relay
	extra        string // appended YAML
	drainTimeout string
	catalogDB    string // database of catalog_dsn; postgres when empty
}

// proxy is a running `phiproxy serve`.
type proxy struct {
	port   int
	cmd    *exec.Cmd
	out    *syncBuffer
	config string
	done   chan error
}

func (p *proxy) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// startProxy runs the real binary with a config built from o and stops it
// when the test ends.
func startProxy(t *testing.T, o proxyOpts) *proxy {
	t.Helper()
	e := fixture
	if o.clientTLS == "" {
		o.clientTLS = "allow"
	}
	if o.upstreamSSL == "" {
		o.upstreamSSL = "verify-full"
	}
	if o.authMode == "" {
		o.authMode = "terminate"
	}
	if o.drainTimeout == "" {
		o.drainTimeout = "5s"
	}
	if o.catalogDB == "" {
		o.catalogDB = "postgres"
	}
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
client_tls: {mode: %s, cert: %s, key: %s}
upstream: {address: %s, sslmode: %s, sslrootcert: %s, server_name: localhost}
catalog_dsn: postgres://%s@%s/%s?sslmode=require
auth: {mode: %s}
limits: {drain_timeout: %s}
%s`, port, o.clientTLS, e.certFile, e.keyFile, e.cluster.Addr(), o.upstreamSSL, e.cluster.CA.CertFile,
		e.cluster.SuperUser, e.cluster.Addr(), o.catalogDB, o.authMode, o.drainTimeout, o.extra)
	p := &proxy{port: port, config: tempFile(t, "phiproxy.yaml", cfg)}
	p.serve(t)
	return p
}

// serve runs `phiproxy serve` on p.config, kills it when the test ends,
// and returns once it listens on p.port.
func (p *proxy) serve(t *testing.T) {
	t.Helper()
	p.out, p.done = &syncBuffer{}, make(chan error, 1)
	p.cmd = exec.Command(fixture.binary, "serve", "--config", p.config)
	p.cmd.Env = append(os.Environ(), "PGPASSFILE="+fixture.pgpass)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("phiproxy output:\n%s", p.out.String())
		}
	})
	eventually(t, 20*time.Second, func() string {
		conn, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err == nil {
			conn.Close()
			return ""
		}
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup, which waits for it
			t.Fatalf("phiproxy exited: %v\n%s", err, p.out.String())
		default:
		}
		return fmt.Sprintf("phiproxy did not listen on %s:\n%s", p.addr(), p.out.String())
	})
}

// eventually calls try until it returns "" (done), every 30 ms for at
// most timeout; then the test fails with try's last answer.
func eventually(t *testing.T, timeout time.Duration, try func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := try()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// shutdown stops p as an operator does, with SIGTERM, and waits until it
// has drained and exited.
func (p *proxy) shutdown(t *testing.T) {
	t.Helper()
	p.exit(t, syscall.SIGTERM)
}

// exit sends sig to p and waits (30 s at most) for it to end.
func (p *proxy) exit(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup, which waits for it
	case <-time.After(30 * time.Second):
		t.Fatalf("phiproxy did not exit after %v", sig)
	}
}

// tempFile writes content to a file name in a new temporary directory
// (mode 0600) and returns its path.
func tempFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// phiproxyCmd runs the binary with args (the process's environment, and
// the fixture's PGPASSFILE) and returns its output and exit code.
func phiproxyCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(fixture.binary, args...)
	cmd.Env = append(os.Environ(), "PGPASSFILE="+fixture.pgpass)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// dsn is a libpq/pgx URL to the proxy (or, with direct, to PostgreSQL) as
// user/password on db.
func (e *env) dsn(hostport, user, password, db string, params ...string) string {
	ps := append([]string{}, params...)
	has := func(k string) bool {
		for _, p := range ps {
			if strings.HasPrefix(p, k+"=") {
				return true
			}
		}
		return false
	}
	if !has("sslmode") {
		ps = append(ps, "sslmode=disable")
	}
	q := strings.Join(ps, "&")
	return fmt.Sprintf("postgres://%s:%s@%s/%s?%s", user, password, hostport, db, q)
}

// appDSN is dsn for role app, the owner of every test database.
func appDSN(hostport, db string, params ...string) string {
	return fixture.dsn(hostport, "app", "app-pw", db, params...)
}

// psql runs the real psql with a connection string and arguments.
func psql(t *testing.T, conninfo string, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(fixture.cluster.BinDir, "psql")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-d", conninfo}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// runCmd runs a client program and returns its stdout; stderr and the exit
// status fail the test with everything printed.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args[:min(len(args), 2)], " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// perRun is what a package run builds once, on first use (a fixture, a
// compiled program); if building it failed, every test that needs it
// fails with the error.
type perRun[T any] struct {
	once sync.Once
	v    T
	err  error
}

func (p *perRun[T]) get(t *testing.T, what string, build func() (T, error)) T {
	t.Helper()
	p.once.Do(func() { p.v, p.err = build() })
	if p.err != nil {
		t.Fatalf("%s: %v", what, p.err)
	}
	return p.v
}

// syncBuffer is what a child process writes while the test reads it (the
// package's name for testenv.Buffer).
type syncBuffer = testenv.Buffer

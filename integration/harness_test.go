package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	dir := t.TempDir()
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
client_tls: {mode: %s, cert: %s, key: %s}
upstream: {address: %s, sslmode: %s, sslrootcert: %s, server_name: localhost}
catalog_dsn: postgres://%s@%s/%s?sslmode=require
auth: {mode: %s}
limits: {drain_timeout: %s}
%s`, port, o.clientTLS, e.certFile, e.keyFile, e.cluster.Addr(), o.upstreamSSL, e.cluster.CA.CertFile,
		e.cluster.SuperUser, e.cluster.Addr(), o.catalogDB, o.authMode, o.drainTimeout, o.extra)
	cfgPath := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proxy{port: port, out: &syncBuffer{}, config: cfgPath, done: make(chan error, 1)}
	p.cmd = exec.Command(e.binary, "serve", "--config", cfgPath)
	p.cmd.Env = append(os.Environ(), "PGPASSFILE="+e.pgpass)
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err == nil {
			conn.Close()
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup, which waits for it
			t.Fatalf("phiproxy exited: %v\n%s", err, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("phiproxy did not listen on %s:\n%s", p.addr(), p.out.String())
		}
		time.Sleep(30 * time.Millisecond)
	}
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

// syncBuffer is what a child process writes while the test reads it (the
// package's name for testenv.Buffer).
type syncBuffer = testenv.Buffer

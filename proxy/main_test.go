package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// The one PostgreSQL cluster of this package's tests (TLS on).
var testCluster *pgcluster.Cluster

const (
	appUser     = testenv.AppUser
	appPassword = testenv.AppPassword
	appDB       = testenv.AppDB
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if !needsCluster() {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	c, err := testenv.StartCluster(ctx, pgcluster.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests:", err)
		return 1
	}
	defer c.Stop()
	testCluster = c
	return m.Run()
}

// needsCluster is false when only fuzzing or benchmarking the in-memory
// paths was asked for, so `go test -fuzz` does not start PostgreSQL, nor
// does the child process of TestAcceptOutOfFileDescriptors.
func needsCluster() bool {
	if os.Getenv(acceptChildEnv) != "" {
		return false
	}
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzz=") || strings.HasPrefix(a, "-test.run=^$") || a == "-test.run=^$" {
			return false
		}
	}
	return true
}

// testProxy is a running proxy in front of the test cluster.
type testProxy struct {
	srv  *Server
	addr string
	logs *testenv.Buffer // the proxy's JSON log, kept for canary checks
	cfg  *config.Config
}

// proxyConfig renders a config for upstream address up (sslmode disable,
// auth terminate unless extra lines say otherwise); extra YAML lines are
// appended.
func proxyConfig(t testing.TB, up string, extra ...string) *config.Config {
	t.Helper()
	catalog := "127.0.0.1:1" // fuzzing and benchmarks run without PostgreSQL
	if testCluster != nil {
		catalog = testCluster.Addr()
	}
	y := "listen: 127.0.0.1:0\ncatalog_dsn: postgres://postgres@" + catalog + "/postgres?sslmode=disable\n"
	if !slices.ContainsFunc(extra, func(l string) bool { return strings.HasPrefix(l, "upstream:") }) {
		y += "upstream: {address: " + up + ", sslmode: disable}\n"
	}
	y += strings.Join(extra, "\n") + "\n"
	cfg, err := config.Parse([]byte(y), "")
	if err != nil {
		t.Fatalf("config: %v\n%s", err, y)
	}
	return cfg
}

// startProxy runs a proxy for cfg on a free port until the test ends.
func startProxy(t testing.TB, cfg *config.Config, opts ...Option) *testProxy {
	t.Helper()
	logs := &testenv.Buffer{}
	opts = append([]Option{WithLogger(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))}, opts...)
	srv, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.Serve(t, srv, func(err error) {
		if err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return &testProxy{srv: srv, addr: addr, logs: logs, cfg: cfg}
}

// dsn is a connection string to the proxy as the app user.
func (p *testProxy) dsn(params ...string) string {
	return testenv.AppDSN(p.addr, params...)
}

func directDSN(params ...string) string {
	return testCluster.DSN(appUser, appPassword, appDB, append([]string{"sslmode=disable"}, params...)...)
}

// connect connects to dsn, each of configure applied to its config, until
// the test ends.
func connect(t testing.TB, ctx context.Context, dsn string, configure ...func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	return testenv.Connect(t, ctx, dsn, func(cc *pgx.ConnConfig) {
		for _, f := range configure {
			f(cc)
		}
	})
}

// scratchTable creates the table name (v text) for the test, dropped when
// it ends, and returns the direct connection that made it.
func scratchTable(t *testing.T, ctx context.Context, name string) *pgx.Conn {
	t.Helper()
	direct := connect(t, ctx, directDSN())
	if _, err := direct.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+name+" (v text)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = direct.Exec(context.Background(), "DROP TABLE IF EXISTS "+name) })
	return direct
}

func testCtx(t testing.TB) context.Context { return testenv.Context(t, 30*time.Second) }

// forwarder is a TCP relay in front of the cluster that answers 'N' to an
// SSLRequest itself: to the proxy it looks like a PostgreSQL server with
// ssl = off. kill cuts every connection it carries.
type forwarder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startForwarder(t testing.TB, target string) *forwarder {
	t.Helper()
	f := &forwarder{}
	f.ln = testenv.AcceptLoop(t, f.kill, func(c net.Conn) { f.serve(c, target) })
	return f
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

func (f *forwarder) serve(c net.Conn, target string) {
	defer c.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	first := hdr[:]
	if bytes.Equal(hdr[:], []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}) {
		if _, err := c.Write([]byte{'N'}); err != nil {
			return
		}
		first = nil
	}
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	f.mu.Lock()
	f.conns = append(f.conns, c, u)
	f.mu.Unlock()
	if _, err := u.Write(first); err != nil {
		return
	}
	go func() { _, _ = io.Copy(c, u); c.Close() }()
	_, _ = io.Copy(u, c)
}

func (f *forwarder) kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

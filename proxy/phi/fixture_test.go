package phi

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/proxy"
)

// How a test starts: a proxy in front of the package's cluster
// (main_test.go) and connections through it and around it, all closed
// when the test ends.

type testProxy struct {
	phi  *Proxy
	addr string
	logs *testenv.Buffer
}

// fixture is the start of most tests: a proxy, and the test's context
// in which via connects through it and direct straight to PostgreSQL.
type fixture struct {
	*testProxy
	t   testing.TB
	ctx context.Context
}

// start runs a proxy (startProxy, with opts) for the test and returns
// the test's context and the fixture.
func start(t testing.TB, opts ...Option) (context.Context, *fixture) {
	t.Helper()
	f := fixtureOf(t, startProxy(t, opts...))
	return f.ctx, f
}

// fixtureOf is the fixture of p, a proxy already serving the test.
func fixtureOf(t testing.TB, p *testProxy) *fixture {
	return &fixture{testProxy: p, t: t, ctx: testCtx(t)}
}

// startWatched installs the catalog's event triggers (watchCatalog) and
// runs a proxy: it learns of DDL done around it when it is done.
func startWatched(t testing.TB) (context.Context, *fixture) {
	t.Helper()
	watchCatalog(t, testCtx(t))
	return start(t)
}

// watchCatalog installs the catalog's event triggers over a superuser
// connection, which it returns.
func watchCatalog(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	if err := InstallCatalogTrigger(ctx, super); err != nil {
		t.Fatal(err)
	}
	return super
}

// via connects through the proxy in mode, with the DSN parameters params.
func (f *fixture) via(mode pgx.QueryExecMode, params ...string) *pgx.Conn {
	f.t.Helper()
	return connect(f.t, f.ctx, f.dsn(params...), mode)
}

// direct connects straight to PostgreSQL in mode.
func (f *fixture) direct(mode pgx.QueryExecMode) *pgx.Conn {
	f.t.Helper()
	return connect(f.t, f.ctx, directDSN(), mode)
}

// startProxy runs phiproxy with the PHI layer in front of the cluster.
func startProxy(t testing.TB, opts ...Option) *testProxy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Each test starts from empty tables: no test depends on another's
	// rows, and the package can run with -count > 1.
	if conn, err := pgx.Connect(ctx, directDSN()); err != nil {
		t.Fatal(err)
	} else {
		_, err := conn.Exec(ctx, "TRUNCATE patients, patients_plain, visits, visits_plain, restricted, types, types_plain, blobs")
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	return serveProxy(t, ctx, testCfg, opts...)
}

// serveProxy runs phiproxy with the PHI layer of cfg in front of the
// cluster until the test ends.
func serveProxy(t testing.TB, ctx context.Context, cfg *config.Config, opts ...Option) *testProxy {
	t.Helper()
	logs := &testenv.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(ctx, cfg, append([]Option{WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.WithLogger(log), proxy.WithInterceptor(p.Factory()))
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.Serve(t, srv, func(error) {
		p.Close()
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return &testProxy{phi: p, addr: addr, logs: logs}
}

// proxied starts a proxy (startProxy) and returns a test context and a
// connection through it in mode.
func proxied(t *testing.T, mode pgx.QueryExecMode) (context.Context, *pgx.Conn) {
	t.Helper()
	ctx, f := start(t)
	return ctx, f.via(mode)
}

// simpleTwins starts a proxy and returns a test context, a
// simple-protocol connection through it and one direct.
func simpleTwins(t *testing.T) (ctx context.Context, via, direct *pgx.Conn) {
	t.Helper()
	ctx, f := start(t)
	return ctx, f.via(pgx.QueryExecModeSimpleProtocol), f.direct(pgx.QueryExecModeSimpleProtocol)
}

func (p *testProxy) dsn(params ...string) string {
	return testenv.AppDSN(p.addr, params...)
}

func directDSN() string {
	return testCluster.DSN(appUser, appPassword, appDB, "sslmode=disable")
}

// connect connects to dsn in mode, each of configure applied to its
// config, until the test ends.
func connect(t testing.TB, ctx context.Context, dsn string, mode pgx.QueryExecMode, configure ...func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	return testenv.Connect(t, ctx, dsn, func(cc *pgx.ConnConfig) {
		cc.DefaultQueryExecMode = mode
		for _, f := range configure {
			f(cc)
		}
	})
}

// superConn connects to the app database as the cluster's superuser.
func superConn(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	return connect(t, ctx, testCluster.DSN(testCluster.SuperUser, testCluster.SuperPassword, appDB, "sslmode=disable"), pgx.QueryExecModeCacheStatement)
}

func testCtx(t testing.TB) context.Context { return testenv.Context(t, 60*time.Second) }

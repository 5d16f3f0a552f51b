package phi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
	"github.com/phiproxy/phiproxy/proxy"
)

// The package's one PostgreSQL cluster and the config every test uses.
var (
	testCluster *pgcluster.Cluster
	testCfg     *config.Config
)

const (
	appUser     = testenv.AppUser
	appPassword = testenv.AppPassword
	appDB       = testenv.AppDB
)

// typeCols are the logical types exercised, one randomized column each in
// public.types (bytea) and public.types_plain (the real type).
var typeCols = []struct{ name, typ, sqlType string }{
	{"t_text", "text", "text"},
	{"t_varchar", "varchar", "varchar"},
	{"t_date", "date", "date"},
	{"t_ts", "timestamp", "timestamp"},
	{"t_tstz", "timestamptz", "timestamptz"},
	{"t_int4", "int4", "int4"},
	{"t_int8", "int8", "int8"},
	{"t_numeric", "numeric", "numeric"},
	{"t_bool", "bool", "bool"},
	{"t_uuid", "uuid", "uuid"},
	{"t_jsonb", "jsonb", "jsonb"},
}

func phiYAML() string {
	var b strings.Builder
	b.WriteString(`phi:
  public.patients:
    ssn:       {type: text, mode: deterministic, default: plaintext}
    diagnosis: {type: text, mode: randomized, default: plaintext}
    dob:       {type: date, mode: randomized, default: plaintext}
    mrn:       {type: int8, mode: deterministic, default: plaintext}
  public.visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn, default: plaintext}
  public.sq_patients:
    gov_id:    {type: text, mode: deterministic, default: plaintext}
    condition: {type: text, mode: randomized, default: plaintext}
    born:      {type: date, mode: randomized, default: plaintext}
  public.restricted:
    secret: {type: text, mode: randomized, default: deny}
  public.types:
`)
	for _, c := range typeCols {
		fmt.Fprintf(&b, "    %s: {type: %s, mode: randomized, default: plaintext}\n", c.name, c.typ)
	}
	return b.String()
}

func schemaSQL() string {
	var enc, plain []string
	for _, c := range typeCols {
		enc = append(enc, c.name+" bytea")
		plain = append(plain, c.name+" "+c.sqlType)
	}
	return `
CREATE TABLE patients (id int4 PRIMARY KEY, name text, ssn bytea, diagnosis bytea, dob bytea, mrn bytea, active bool DEFAULT true, blob bytea);
CREATE TABLE patients_plain (id int4 PRIMARY KEY, name text, ssn text, diagnosis text, dob date, mrn int8, active bool DEFAULT true, blob bytea);
CREATE TABLE visits (id int4 PRIMARY KEY, patient_ssn bytea, note text);
CREATE TABLE visits_plain (id int4 PRIMARY KEY, patient_ssn text, note text);
CREATE TABLE restricted (id int4 PRIMARY KEY, secret bytea, label text);
CREATE TABLE types (id int4 PRIMARY KEY, ` + strings.Join(enc, ", ") + `);
CREATE TABLE types_plain (id int4 PRIMARY KEY, ` + strings.Join(plain, ", ") + `);
CREATE TABLE blobs (id int4 PRIMARY KEY, b bytea, t text);
CREATE TABLE sq_patients (id serial PRIMARY KEY, name text, gov_id bytea UNIQUE, condition bytea, born bytea);
CREATE TABLE sq_patients_plain (id serial PRIMARY KEY, name text, gov_id text UNIQUE, condition text, born date);
`
}

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Every statement the server receives is logged: the fail-closed tests
	// read the log for plaintext that must never have left the proxy.
	c, err := testenv.StartCluster(ctx, pgcluster.Options{Conf: []string{"log_statement = 'all'"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "phi tests:", err)
		return 1
	}
	defer c.Stop()
	dir, err := os.MkdirTemp("", "phi-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cfg, err := setupPHI(ctx, c, dir, phiYAML(), schemaSQL())
	if err != nil {
		fmt.Fprintln(os.Stderr, "phi tests:", err)
		return 1
	}
	testCluster, testCfg = c, cfg
	return m.Run()
}

// setupPHI writes into dir a config for a proxy in front of c with the
// phi: section phi, loads it and makes its keys (crypto.InitKeys); then it runs,
// as app, each statement of schema and the envelope CHECK of every PHI
// column.
func setupPHI(ctx context.Context, c *pgcluster.Cluster, dir, phi string, schema ...string) (*config.Config, error) {
	doc := "listen: 127.0.0.1:0\n" +
		"upstream: {address: " + c.Addr() + ", sslmode: disable}\n" +
		"catalog_dsn: postgres://" + c.SuperUser + "@" + c.Addr() + "/" + appDB + "?sslmode=disable\n" +
		"keys: {dir: keys/, kek: \"file:kek.json\"}\n" + phi
	path := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := crypto.InitKeys(ctx, cfg, crypto.Options{}); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	conn, err := pgx.Connect(ctx, c.DSN(appUser, appPassword, appDB, "sslmode=disable"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	for _, col := range cfg.Columns() {
		schema = append(schema, crypto.EnvelopeCheckSQL(col))
	}
	for _, s := range schema {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("schema: %s: %w", s, err)
		}
	}
	return cfg, nil
}

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

// pgError is the *pgconn.PgError in err's chain, nil if there is none.
func pgError(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	errors.As(err, &pe)
	return pe
}

// sqlstate is the SQLSTATE of the PostgreSQL error in err's chain, "" if
// there is none.
func sqlstate(err error) string {
	if pe := pgError(err); pe != nil {
		return pe.Code
	}
	return ""
}

var modes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
}

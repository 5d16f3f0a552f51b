package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// The login role and database StartCluster creates, which tests connect
// as through the proxy and directly. The password is test-only.
const (
	AppUser     = "app"
	AppPassword = "app-secret"
	AppDB       = "appdb"
)

// StartCluster starts a cluster for a package's TestMain, creates AppUser
// and its database AppDB, and sets PGPASSFILE to a pgpass file with the
// superuser's password: a proxy's catalog connection takes its password
// from there, as in production (config refuses one in catalog_dsn). The
// caller must Stop the cluster, which removes the pgpass file too.
func StartCluster(ctx context.Context, opts pgcluster.Options) (*pgcluster.Cluster, error) {
	c, err := pgcluster.Start(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	for _, sql := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", AppUser, AppPassword),
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", AppDB, AppUser),
	} {
		if err := c.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("setup: %w", err)
		}
	}
	pgpass, err := c.WritePgpass()
	if err != nil {
		return nil, err
	}
	if err := os.Setenv("PGPASSFILE", pgpass); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// AppDSN is a URL to addr as AppUser on AppDB, with sslmode=disable and
// then params ("key=value") as its query.
func AppDSN(addr string, params ...string) string {
	return "postgres://" + AppUser + ":" + AppPassword + "@" + addr + "/" + AppDB + "?" + strings.Join(append([]string{"sslmode=disable"}, params...), "&")
}

// LazyCluster is a package's cluster started on first use, so that the
// package's pure tests, benchmarks and fuzz targets need no server. The
// package's TestMain runs the tests with Run, which stops it.
type LazyCluster struct {
	Options pgcluster.Options

	once    sync.Once
	cluster *pgcluster.Cluster
	err     error
}

// Get returns the cluster, starting it (within two minutes) on the first
// call. If it could not start, Get fails t, on that call and every later
// one.
func (l *LazyCluster) Get(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	l.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		l.cluster, l.err = pgcluster.Start(ctx, l.Options)
	})
	if l.err != nil {
		t.Fatal(l.err)
	}
	return l.cluster
}

// Run runs m's tests, stops the cluster if they started it, and returns
// the exit code: a package's TestMain is os.Exit(shared.Run(m)).
func (l *LazyCluster) Run(m *testing.M) int {
	code := m.Run()
	if l.cluster != nil {
		l.cluster.Stop()
	}
	return code
}

// FreshDB returns a superuser connection to a new, empty database of the
// cluster named for the test (dropped first if a previous run left it),
// closed when the test ends.
func (l *LazyCluster) FreshDB(t *testing.T) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	c := l.Get(t)
	db := "t_" + strings.ToLower(strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	if len(db) > 60 {
		db = db[:60]
	}
	for _, sql := range []string{"DROP DATABASE IF EXISTS " + db, "CREATE DATABASE " + db} {
		if err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, c.DSN(c.SuperUser, c.SuperPassword, db, "sslmode=disable"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

package admin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// The package's PostgreSQL, started by the first test that needs it (the
// admin server's own tests need none): a database with one PHI table and
// a config with its keys.
type phiEnv struct {
	cluster *pgcluster.Cluster
	cfg     *config.Config
}

var (
	envOnce sync.Once
	env     *phiEnv
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		env.cluster.Stop()
	}
	os.Exit(code)
}

// phiCluster returns the package's cluster and config, starting them.
func phiCluster(t *testing.T) *phiEnv {
	t.Helper()
	envOnce.Do(func() { env, envErr = startPHIEnv() })
	if envErr != nil {
		t.Fatal(envErr)
	}
	return env
}

func startPHIEnv() (*phiEnv, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := testenv.StartCluster(ctx, pgcluster.Options{NoTLS: true})
	if err != nil {
		return nil, err
	}
	e := &phiEnv{cluster: c}
	fail := func(err error) (*phiEnv, error) { c.Stop(); return nil, err }
	dir, err := os.MkdirTemp("", "admin-test-")
	if err != nil {
		return fail(err)
	}
	doc := "listen: 127.0.0.1:0\n" +
		"upstream: {address: " + c.Addr() + ", sslmode: disable}\n" +
		"catalog_dsn: postgres://" + c.SuperUser + "@" + c.Addr() + "/" + testenv.AppDB + "?sslmode=disable\n" +
		"keys: {dir: keys/, kek: \"file:kek.json\"}\n" +
		"phi:\n  public.patients:\n    ssn: {type: text, mode: deterministic, default: plaintext}\n"
	path := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		return fail(err)
	}
	if e.cfg, err = config.Load(path); err != nil {
		return fail(err)
	}
	if err := crypto.InitKeys(ctx, e.cfg, crypto.Options{}); err != nil {
		return fail(err)
	}
	conn, err := pgx.Connect(ctx, c.DSN(testenv.AppUser, testenv.AppPassword, testenv.AppDB, "sslmode=disable"))
	if err != nil {
		return fail(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE patients (id int4 PRIMARY KEY, name text, ssn bytea)"); err != nil {
		return fail(fmt.Errorf("schema: %w", err))
	}
	return e, nil
}

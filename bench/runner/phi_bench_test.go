package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// BenchmarkPHIWorkload runs bench/phi.sql's four statements through an
// in-process phiproxy with PHI columns, with pgx in prepared (cached
// statement) and simple-protocol mode, so that a CPU profile can be taken
// of the proxy:
//
//	go test ./bench/runner -run '^$' -bench PHIWorkload/simple -benchtime 10s -cpuprofile /tmp/phi.cpu
//	go tool pprof -top -tagfocus side=proxy bench/runner/runner.test /tmp/phi.cpu
//
// The proxy's goroutines carry the profiler label side=proxy, so the
// client's own CPU can be left out. The PHI layer's share is the cum of
// its two entry points (a -focus of "proxy/phi" would match every package:
// the module path is github.com/phiproxy/phiproxy):
//
//	go tool pprof -top -cum -tagfocus side=proxy bench/runner/runner.test /tmp/phi.cpu |
//		grep -E 'phi\.\(\*session\)\.(ClientMessage|ServerMessage)$|crypto\.\(\*Cipher\)'
func BenchmarkPHIWorkload(b *testing.B) {
	const rows = 10000
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{NoTLS: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	if err := c.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, benchUser, benchPass)); err != nil {
		b.Fatal(err)
	}
	if err := setupPHIDatabases(ctx, c, rows); err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	pgpass := filepath.Join(work, "pgpass")
	if err := os.WriteFile(pgpass, []byte(fmt.Sprintf("%s:%d:*:%s:%s\n", c.Host, c.Port, c.SuperUser, c.SuperPassword)), 0o600); err != nil {
		b.Fatal(err)
	}
	b.Setenv("PGPASSFILE", pgpass)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	cfgPath, err := writeProxyConfig(ctx, filepath.Join(work, "phi"), port, c, phiDB, phiColumns)
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	ph, err := phi.New(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer ph.Close()
	srv, err := proxy.New(cfg, proxy.WithInterceptor(ph.Factory()))
	if err != nil {
		b.Fatal(err)
	}
	go pprof.Do(ctx, pprof.Labels("side", "proxy"), func(ctx context.Context) { srv.Serve(ctx, ln) })
	defer srv.Close()

	dsn := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", benchUser, benchPass, port, phiDB)
	if err := loadPHIRows(ctx, dsn, rows); err != nil {
		b.Fatal(err)
	}
	w := testenv.NewPHIWorkload("patients", rows)
	for _, mode := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"prepared", pgx.QueryExecModeCacheStatement}, {"simple", pgx.QueryExecModeSimpleProtocol}} {
		b.Run(mode.name, func(b *testing.B) { phiWorkload(b, dsn, w, mode.mode) })
	}
}

// phiWorkload runs the four statements in a loop on one connection; with
// the simple protocol pgx inlines the values, as pgbench -M simple does.
func phiWorkload(b *testing.B, dsn string, w *testenv.PHIWorkload, mode pgx.QueryExecMode) {
	ctx := context.Background()
	conn := testenv.Connect(b, ctx, dsn, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = mode })
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Run(ctx, conn); err != nil {
			b.Fatal(err)
		}
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// runDemo starts a throwaway PostgreSQL 15 cluster and phiproxy in front of
// it, prints connection strings, and runs until interrupted. Everything it
// creates lives in one temporary directory removed on exit.
func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	port := fs.Int("port", 6432, "port phiproxy listens on (127.0.0.1)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("demo takes no arguments")
	}

	fmt.Fprintln(env.stdout, "phiproxy demo: starting a throwaway PostgreSQL 15 cluster…")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	const appUser, appPassword, db = "demo", "demo-password", "clinic"
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", appUser, appPassword)); err != nil {
		return err
	}
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, appUser)); err != nil {
		return err
	}

	work, err := os.MkdirTemp("", "phiproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	certFile, keyFile, err := cluster.CA.Issue("localhost", "127.0.0.1")
	if err != nil {
		return err
	}
	pgpass := filepath.Join(work, "pgpass")
	if err := os.WriteFile(pgpass, []byte(fmt.Sprintf("*:*:*:%s:%s\n", cluster.SuperUser, cluster.SuperPassword)), 0o600); err != nil {
		return err
	}
	// The catalog connection's password comes from PGPASSFILE, as the config
	// reference documents; the demo points it at its own file.
	os.Setenv("PGPASSFILE", pgpass)
	cfgPath := filepath.Join(work, "phiproxy.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
client_tls: {mode: allow, cert: %s, key: %s}
upstream: {address: %s, sslmode: verify-full, sslrootcert: %s, server_name: localhost}
catalog_dsn: postgres://%s@localhost:%d/postgres?sslmode=verify-full&sslrootcert=%s
`, *port, certFile, keyFile, cluster.Addr(), cluster.CA.CertFile, cluster.SuperUser, cluster.Port, cluster.CA.CertFile)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}

	fmt.Fprintf(env.stdout, `
PostgreSQL 15 (direct):   psql "postgres://%[1]s:%[2]s@localhost:%[3]d/%[4]s?sslmode=verify-full&sslrootcert=%[5]s"
through phiproxy:         psql "postgres://%[1]s:%[2]s@localhost:%[6]s/%[4]s?sslmode=verify-full&sslrootcert=%[5]s"

config: %[7]s
Press Ctrl-C to stop; everything is removed on exit.

`, appUser, appPassword, cluster.Port, db, cluster.CA.CertFile, strconv.Itoa(*port), cfgPath)
	return runServe(ctx, env, []string{"--config", cfgPath})
}

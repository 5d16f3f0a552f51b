package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/check"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// runCheck is `phiproxy check`: the config and keys against the live
// schema (docs/operations.md, "Checking the config against the database").
// It only reads: the session is read-only. Exit 0 no findings, 1 findings,
// 2 usage or config error or the database could not be read.
func runCheck(ctx context.Context, env *cmdEnv, args []string) error {
	var cfgPath, dsn, format string
	var sample int
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.StringVar(&cfgPath, "config", "", "config file (YAML), required")
	fs.StringVar(&dsn, "dsn", "", "connect with this DSN instead of catalog_dsn (a role that may read the PHI tables)")
	fs.StringVar(&format, "format", "table", "output: table or json")
	fs.IntVar(&sample, "sample", check.DefaultSampleSize, "non-NULL values per PHI column whose first bytes are looked at")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: phiproxy check --config FILE [--dsn DSN] [--format table|json] [--sample N]\n\n"+
			"Compares the config and its keysets with the live schema of catalog_dsn's database and\n"+
			"lists each problem with its fix. Read-only. Exit 0: no findings; 1: findings; 2: usage or\n"+
			"config error, or the database could not be read.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	switch {
	case fs.NArg() > 0:
		return usagef("check takes no arguments, got %q", fs.Args())
	case cfgPath == "":
		return usagef("check: --config FILE is required")
	case format != "table" && format != "json":
		return usagef("check: --format %q is not table or json", format)
	case sample < 1:
		return usagef("check: --sample must be at least 1")
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return usageError{err}
	}
	if dsn == "" {
		dsn = cfg.CatalogDSN
	}
	in := check.Input{Config: cfg, ConfigArg: cfgPath, SampleSize: sample}
	if st, err := crypto.OpenStore(ctx, cfg.Keys, crypto.Options{Env: crypto.EnvFromOS()}); err != nil {
		in.KeysErr = err
	} else {
		in.Keysets, in.KeysErr = st.List()
	}
	findings, err := checkDatabase(ctx, dsn, in)
	if err != nil {
		return usageError{err}
	}
	if format == "json" {
		err = check.WriteJSON(env.stdout, findings)
	} else {
		err = check.WriteTable(env.stdout, findings)
	}
	if err != nil {
		return err
	}
	if s := check.Summarize(findings); len(findings) > 0 {
		return findingsError{fmt.Errorf("check: %d errors, %d warnings", s.Errors, s.Warnings)}
	}
	return nil
}

// checkDatabase connects to dsn read-only and runs the check.
func checkDatabase(ctx context.Context, dsn string, in check.Input) ([]check.Finding, error) {
	pc, err := pgxpool.ParseConfig(dsn) // catalog_dsn may carry pool_* parameters
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	cc := pc.ConnConfig
	cc.RuntimeParams["default_transaction_read_only"] = "on"
	cc.RuntimeParams["application_name"] = "phiproxy check"
	// A table locked by DDL (phiproxy encrypt's swap, say) or a sample
	// that scans far for non-NULL values makes that column's sample a
	// sample_failed finding instead of a hang.
	cc.RuntimeParams["lock_timeout"] = "5s"
	cc.RuntimeParams["statement_timeout"] = "60s"
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("check: connecting: %w", err)
	}
	defer conn.Close(context.Background())
	cat, err := config.LoadCatalog(ctx, conn, in.Config, 1)
	if err != nil {
		return nil, err
	}
	if st, err := phi.CheckOverlay(ctx, conn, in.Config, cat); err != nil {
		in.Overlay.Err = err
	} else {
		in.Overlay.Installed, in.Overlay.Current = st.Installed, st.Current
	}
	if in.EventTrigger, _, err = phi.CheckCatalogTrigger(ctx, conn); err != nil {
		return nil, err
	}
	return check.Run(ctx, conn, cat, in)
}

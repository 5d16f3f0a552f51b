package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/migrate"
)

// crashEnv names the test hook that makes encrypt, decrypt and reencrypt
// kill themselves (SIGKILL, as kill -9 would) at a named point of the
// migration (migrate.Options.CrashAt): the integration tests interrupt a
// run there and rerun it. It is read here and nowhere else.
const crashEnv = "PHIPROXY_ENCRYPT_CRASH_AT"

// migrateCmd holds the flags of encrypt, decrypt and reencrypt.
type migrateCmd struct {
	name        string
	cfgPath     string
	dsn         string
	columns     []string
	batch       int
	rate        float64
	lockTimeout time.Duration
	plaintextOK bool

	cfg  *config.Config
	cols []config.Column
}

func runEncrypt(ctx context.Context, env *cmdEnv, args []string) error {
	m, err := parseMigrate(env, "encrypt", args,
		"--column SCHEMA.TABLE.COLUMN [--column …] [--batch-size N] [--rate ROWS/S]",
		"encrypt the existing plaintext of PHI columns online: shadow column, backfill, catch-up, swap", true)
	if m == nil || err != nil {
		return err
	}
	return m.run(ctx, env, migrate.Encrypt, audit.ActionEncrypt, "encrypted")
}

func runDecrypt(ctx context.Context, env *cmdEnv, args []string) error {
	m, err := parseMigrate(env, "decrypt", args,
		"--column SCHEMA.TABLE.COLUMN --i-understand-this-writes-plaintext [--batch-size N] [--rate ROWS/S]",
		"turn an encrypted column back into plaintext of its logical type (the reverse of encrypt)", true)
	if m == nil || err != nil {
		return err
	}
	if !m.plaintextOK {
		return usagef("decrypt writes the PHI of %s back into PostgreSQL as plaintext (and into its WAL, replicas and backups); pass --i-understand-this-writes-plaintext",
			strings.Join(m.columns, ", "))
	}
	return m.run(ctx, env, migrate.Decrypt, audit.ActionDecrypt, "decrypted")
}

func runReencrypt(ctx context.Context, env *cmdEnv, args []string) error {
	m, err := parseMigrate(env, "reencrypt", args,
		"[--column SCHEMA.TABLE.COLUMN …] [--batch-size N] [--rate ROWS/S]",
		"after `keys rotate`: rewrite every value not under its column's primary key, online", false)
	if m == nil || err != nil {
		return err
	}
	return m.run(ctx, env, migrate.Reencrypt, audit.ActionReencrypt, "re-encrypted")
}

// parseMigrate parses the shared flags; it returns nil, nil for --help.
func parseMigrate(env *cmdEnv, name string, args []string, usage, summary string, needColumn bool) (*migrateCmd, error) {
	m := &migrateCmd{name: name}
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.StringVar(&m.cfgPath, "config", "", "config file (YAML), required")
	fs.StringVar(&m.dsn, "dsn", "", "connection to the database, as a role that may ALTER the table (default: catalog_dsn)")
	fs.StringArrayVar(&m.columns, "column", nil, "PHI column schema.table.column (repeatable)")
	fs.IntVar(&m.batch, "batch-size", 1000, "rows per batch")
	fs.Float64Var(&m.rate, "rate", 0, "at most this many rows per second (0: no limit)")
	fs.DurationVar(&m.lockTimeout, "lock-timeout", 2*time.Second, "longest wait for the table's lock at setup and swap; retried with backoff")
	if name == "decrypt" {
		fs.BoolVar(&m.plaintextOK, "i-understand-this-writes-plaintext", false, "required: decrypt writes plaintext PHI into PostgreSQL")
	}
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: phiproxy %s --config FILE %s\n\n%s\n\n", name, usage, summary)
		fs.PrintDefaults()
		fmt.Fprintf(env.stderr, "\nSee docs/adoption.md and docs/keys.md.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, nil
		}
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usagef("%s takes no arguments, got %q", name, fs.Args())
	}
	if m.cfgPath == "" {
		return nil, usagef("%s: --config FILE is required", name)
	}
	if needColumn && len(m.columns) == 0 {
		return nil, usagef("%s: --column SCHEMA.TABLE.COLUMN is required", name)
	}
	if m.batch <= 0 || m.rate < 0 || m.lockTimeout <= 0 {
		return nil, usagef("%s: --batch-size and --lock-timeout must be positive, --rate not negative", name)
	}
	cfg, err := config.Load(m.cfgPath)
	if err != nil {
		return nil, usageError{err}
	}
	m.cfg = cfg
	if len(m.columns) == 0 {
		m.cols = cfg.Columns()
		if len(m.cols) == 0 {
			return nil, usagef("%s: %s has no PHI columns", name, m.cfgPath)
		}
	}
	for _, c := range m.columns {
		parts := strings.Split(c, ".")
		if len(parts) != 3 {
			return nil, usagef("%s: --column %q is not schema.table.column", name, c)
		}
		col, ok := cfg.Column(parts[0], parts[1], parts[2])
		if !ok {
			return nil, usagef("%s: %s is not a PHI column in %s: add it to the phi map first (its type and mode say how to encrypt it)", name, c, m.cfgPath)
		}
		m.cols = append(m.cols, col)
	}
	return m, nil
}

type migrateFunc func(context.Context, *pgx.Conn, config.Column, *crypto.Cipher, migrate.Options) (migrate.Result, error)

func (m *migrateCmd) run(ctx context.Context, env *cmdEnv, fn migrateFunc, action, verb string) error {
	keys, err := crypto.Open(ctx, m.cfg, crypto.Options{Env: crypto.EnvFromOS()})
	if err != nil {
		return usageError{err}
	}
	dsn := m.dsn
	if dsn == "" {
		dsn = m.cfg.CatalogDSN
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return runtimeError{fmt.Errorf("%s: connecting to PostgreSQL: %w", m.name, err)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	o := migrate.Options{BatchSize: m.batch, Rate: m.rate, LockTimeout: m.lockTimeout, Out: env.stdout, TTY: isTerminal(env.stdout),
		CrashAt: os.Getenv(crashEnv), Crash: func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }}
	for _, col := range m.cols {
		cipher, err := keys.Cipher(col.Key)
		if err != nil {
			return usageError{err}
		}
		res, err := fn(ctx, conn, col, cipher, o)
		if err != nil {
			return runtimeError{fmt.Errorf("%s %s: %w", m.name, col.Ident(), err)}
		}
		if res.Already && !res.Completed {
			continue
		}
		detail := fmt.Sprintf("%s: %s %d values in %s (phiproxy %s)", col.Ident(), verb, res.Rows, res.Elapsed.Round(time.Millisecond), m.name)
		if res.Already {
			// An interrupted run swapped the column but was killed before
			// it validated and recorded it.
			detail = fmt.Sprintf("%s: %s (completed what an interrupted run left: the envelope constraint is validated) (phiproxy %s)", col.Ident(), verb, m.name)
		}
		if m.name == "reencrypt" {
			detail = fmt.Sprintf("%s: %s %d values to primary key id %d (phiproxy reencrypt)", col.Ident(), verb, res.Rows, cipher.PrimaryKeyID())
		}
		ev := &audit.Event{Action: action, Detail: detail, Relations: []string{col.Relation()}, Columns: []string{col.Ident()}}
		if err := recordAuditEvent(ctx, env, m.cfg, ev); err != nil {
			return err
		}
	}
	switch m.name {
	case "encrypt":
		fmt.Fprintln(env.stdout, "Reload running proxies (SIGHUP) with this config so that they encrypt and decrypt the column; run `phiproxy check`.")
		fmt.Fprintln(env.stdout, "Old plaintext remains in WAL, backups, replicas' history and dead tuples until VACUUM: see docs/adoption.md.")
	case "decrypt":
		fmt.Fprintln(env.stdout, "Remove the column from the phi map and reload running proxies (SIGHUP).")
	case "reencrypt":
		fmt.Fprintln(env.stdout, "Old keys can now be retired: `phiproxy keys retire --confirm-unused` checks that no value uses them.")
	}
	return nil
}

package main

import (
	"context"
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

// migration is what sets encrypt, decrypt and reencrypt apart; they share
// their flags, the loop over the columns and the audit record.
type migration struct {
	name, usage, summary string // the command's name, flags after --config FILE, and what it does
	needColumn           bool   // --column is required (reencrypt defaults to every PHI column)
	writesPlaintext      bool   // it requires --i-understand-this-writes-plaintext
	fn                   migrateFunc
	action, verb         string // the audit event's action; what was done to the values
	next                 string // what to do once every column is done
}

// migrateCmd holds the flags of encrypt, decrypt and reencrypt.
type migrateCmd struct {
	migration
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
	return runMigration(ctx, env, args, migration{name: "encrypt", needColumn: true,
		usage:   "--column SCHEMA.TABLE.COLUMN [--column …] [--batch-size N] [--rate ROWS/S]",
		summary: "encrypt the existing plaintext of PHI columns online: shadow column, backfill, catch-up, swap",
		fn:      migrate.Encrypt, action: audit.ActionEncrypt, verb: "encrypted",
		next: "Reload running proxies (SIGHUP) with this config so that they encrypt and decrypt the column; run `phiproxy check`.\n" +
			"Old plaintext remains in WAL, backups, replicas' history and dead tuples until VACUUM: see docs/adoption.md."})
}

func runDecrypt(ctx context.Context, env *cmdEnv, args []string) error {
	return runMigration(ctx, env, args, migration{name: "decrypt", needColumn: true, writesPlaintext: true,
		usage:   "--column SCHEMA.TABLE.COLUMN --i-understand-this-writes-plaintext [--batch-size N] [--rate ROWS/S]",
		summary: "turn an encrypted column back into plaintext of its logical type (the reverse of encrypt)",
		fn:      migrate.Decrypt, action: audit.ActionDecrypt, verb: "decrypted",
		next: "Remove the column from the phi map and reload running proxies (SIGHUP)."})
}

func runReencrypt(ctx context.Context, env *cmdEnv, args []string) error {
	return runMigration(ctx, env, args, migration{name: "reencrypt",
		usage:   "[--column SCHEMA.TABLE.COLUMN …] [--batch-size N] [--rate ROWS/S]",
		summary: "after `keys rotate`: rewrite every value not under its column's primary key, online",
		fn:      migrate.Reencrypt, action: audit.ActionReencrypt, verb: "re-encrypted",
		next: "Old keys can now be retired: `phiproxy keys retire --confirm-unused` checks that no value uses them."})
}

// runMigration parses mg's flags and runs it (nothing after --help).
func runMigration(ctx context.Context, env *cmdEnv, args []string, mg migration) error {
	m, err := parseMigrate(env, mg, args)
	if m == nil || err != nil {
		return err
	}
	return m.run(ctx, env)
}

// parseMigrate parses the shared flags; it returns nil, nil for --help.
func parseMigrate(env *cmdEnv, mg migration, args []string) (*migrateCmd, error) {
	m := &migrateCmd{migration: mg}
	name := mg.name
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.StringVar(&m.cfgPath, "config", "", "config file (YAML), required")
	fs.StringVar(&m.dsn, "dsn", "", "connection to the database, as a role that may ALTER the table (default: catalog_dsn)")
	fs.StringArrayVar(&m.columns, "column", nil, "PHI column schema.table.column (repeatable)")
	fs.IntVar(&m.batch, "batch-size", 1000, "rows per batch")
	fs.Float64Var(&m.rate, "rate", 0, "at most this many rows per second (0: no limit)")
	fs.DurationVar(&m.lockTimeout, "lock-timeout", 2*time.Second, "longest wait for the table's lock at setup and swap; retried with backoff")
	if mg.writesPlaintext {
		fs.BoolVar(&m.plaintextOK, "i-understand-this-writes-plaintext", false, "required: "+name+" writes plaintext PHI into PostgreSQL")
	}
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: phiproxy %s --config FILE %s\n\n%s\n\n", name, mg.usage, mg.summary)
		fs.PrintDefaults()
		fmt.Fprintf(env.stderr, "\nSee docs/adoption.md and docs/keys.md.\n")
	}
	cfg, err := parseConfigFlags(fs, args, name, &m.cfgPath)
	if cfg == nil {
		return nil, err // nil after --help
	}
	if mg.needColumn && len(m.columns) == 0 {
		return nil, usagef("%s: --column SCHEMA.TABLE.COLUMN is required", name)
	}
	if m.batch <= 0 || m.rate < 0 || m.lockTimeout <= 0 {
		return nil, usagef("%s: --batch-size and --lock-timeout must be positive, --rate not negative", name)
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
	if mg.writesPlaintext && !m.plaintextOK {
		return nil, usagef("%s writes the PHI of %s back into PostgreSQL as plaintext (and into its WAL, replicas and backups); pass --i-understand-this-writes-plaintext",
			name, strings.Join(m.columns, ", "))
	}
	return m, nil
}

type migrateFunc func(context.Context, *pgx.Conn, config.Column, *crypto.Cipher, migrate.Options) (migrate.Result, error)

func (m *migrateCmd) run(ctx context.Context, env *cmdEnv) error {
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
		res, err := m.fn(ctx, conn, col, cipher, o)
		if err != nil {
			return runtimeError{fmt.Errorf("%s %s: %w", m.name, col.Ident(), err)}
		}
		if res.Already && !res.Completed {
			continue
		}
		detail := fmt.Sprintf("%s: %s %d values in %s (phiproxy %s)", col.Ident(), m.verb, res.Rows, res.Elapsed.Round(time.Millisecond), m.name)
		if res.Already {
			// An interrupted run swapped the column but was killed before
			// it validated and recorded it.
			detail = fmt.Sprintf("%s: %s (completed what an interrupted run left: the envelope constraint is validated) (phiproxy %s)", col.Ident(), m.verb, m.name)
		}
		if m.name == "reencrypt" {
			detail = fmt.Sprintf("%s: %s %d values to primary key id %d (phiproxy reencrypt)", col.Ident(), m.verb, res.Rows, cipher.PrimaryKeyID())
		}
		ev := &audit.Event{Action: m.action, Detail: detail, Relations: []string{col.Relation()}, Columns: []string{col.Ident()}}
		if err := recordAuditEvent(ctx, env, m.cfg, ev); err != nil {
			return err
		}
	}
	fmt.Fprintln(env.stdout, m.next)
	return nil
}

package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/column"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// Options tune a migration.
type Options struct {
	// BatchSize is the number of rows per batch (default 1000).
	BatchSize int
	// Rate caps rows per second; 0 is no limit.
	Rate float64
	// LockTimeout bounds each wait for the table's lock at setup and swap
	// (default 2s); a timed-out attempt is retried with backoff.
	LockTimeout time.Duration
	// Attempts is how many times setup and swap try for the lock
	// (default 20).
	Attempts int
	// Out receives progress and what was done; TTY redraws progress in
	// place.
	Out io.Writer
	TTY bool
	// CrashAt and Crash are a test hook: Crash is called at the named
	// point (setup, backfill-read:N, backfill:N, catchup:N, swap, swapped;
	// catchup, catchup:N, swap, swapped).
	CrashAt string
	Crash   func()
}

func (o *Options) defaults() {
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = 2 * time.Second
	}
	if o.Attempts <= 0 {
		o.Attempts = 20
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

func (o *Options) crashAt(point string) {
	if o.CrashAt != "" && o.CrashAt == point && o.Crash != nil {
		o.Crash()
	}
}

func (o *Options) printf(format string, args ...any) {
	fmt.Fprintf(o.Out, format+"\n", args...)
}

// Result says what a migration did.
type Result struct {
	// Rows is the number of values converted.
	Rows int64
	// Already is set when the column was converted before this run;
	// Completed then says that this run finished what an interrupted one
	// left (it added or validated the CHECK constraint).
	Already, Completed bool
	// Elapsed is the run's duration; Rate its rows per second.
	Elapsed time.Duration
}

// Rate is rows per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Rows) / r.Elapsed.Seconds()
}

// conversion is the direction of a column swap: encrypt or decrypt.
type conversion struct {
	verb       string
	suffix     string
	shadowType string                                  // SQL type of the shadow column
	done       func(colType string) bool               // the column is already converted
	src        string                                  // SQL of the value read (alias t)
	valType    string                                  // array type of the converted values
	cast       string                                  // appended to v.val in SET
	convert    func(src []byte) (any, error)           // one value
	ignore     string                                  // a dependent the swap may drop
	after      func(tx pgx.Tx) error                   // DDL in the swap transaction
	finish     func(ctx context.Context) (bool, error) // after the swap committed (and on an already converted column); whether it changed something
}

// Encrypt converts col from plaintext to envelopes under cipher, online
// (see the package doc). It is idempotent and resumes an interrupted run.
func Encrypt(ctx context.Context, conn *pgx.Conn, col config.Column, cipher *crypto.Cipher, o Options) (Result, error) {
	var enc column.Encoder
	cc := column.Column{Ident: col.Ident(), Type: col.Type, Cipher: cipher}
	in := column.Input{Format: codec.TextFormat, Coercion: codec.Coercion{Assign: true}}
	qcol := pgx.Identifier{col.Name}.Sanitize()
	c := &conversion{
		verb: "encrypt", suffix: "enc", shadowType: "bytea",
		done:    func(typ string) bool { return typ == "bytea" },
		src:     "t." + qcol + "::text",
		valType: "bytea[]",
		convert: func(src []byte) (any, error) { return enc.AppendSeal(nil, cc, in, src) },
		after: func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, crypto.EnvelopeCheckSQL(col))
			return err
		},
	}
	c.finish = func(ctx context.Context) (bool, error) { return ensureCheck(ctx, conn, col, o.Out) }
	return run(ctx, conn, col, c, o)
}

// Decrypt converts col from envelopes back to plaintext of its logical
// type: the reverse of Encrypt, for a column leaving the PHI map.
func Decrypt(ctx context.Context, conn *pgx.Conn, col config.Column, cipher *crypto.Cipher, o Options) (Result, error) {
	var enc column.Encoder
	cc := column.Column{Ident: col.Ident(), Type: col.Type, Cipher: cipher}
	qcol := pgx.Identifier{col.Name}.Sanitize()
	c := &conversion{
		verb: "decrypt", suffix: "dec", shadowType: col.Type,
		done:    func(typ string) bool { return typ != "bytea" },
		src:     "t." + qcol,
		valType: "text[]",
		cast:    "::" + col.Type,
		convert: func(src []byte) (any, error) {
			out, err := enc.AppendOpen(nil, cc, codec.TextFormat, src)
			s := string(out)
			clear(out)
			return s, err
		},
		ignore: crypto.EnvelopeCheckName(col),
		after:  func(pgx.Tx) error { return nil },
		finish: func(context.Context) (bool, error) { return false, nil },
	}
	return run(ctx, conn, col, c, o)
}

// begin readies conn for a migration of col and reads col's table: it
// makes the session's text forms the canonical ones the codec expects
// (UTC, ISO dates). The column must exist.
func begin(ctx context.Context, conn *pgx.Conn, col config.Column) (*table, error) {
	for _, q := range []string{"SET TimeZone TO 'UTC'", "SET DateStyle TO ISO, YMD", "SET IntervalStyle TO postgres", "SET extra_float_digits TO 3"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return nil, err
		}
	}
	t, err := readTable(ctx, conn, col)
	if err != nil {
		return nil, err
	}
	if t.colType == "" {
		return nil, fmt.Errorf("column %s does not exist", col.Ident())
	}
	return t, nil
}

func run(ctx context.Context, conn *pgx.Conn, col config.Column, c *conversion, o Options) (Result, error) {
	o.defaults()
	start := time.Now()
	t, err := begin(ctx, conn, col)
	if err != nil {
		return Result{}, err
	}
	shadow := ShadowName(col, c.suffix)
	trig := triggerName(col, c.suffix)
	shadowType, _, err := columnType(ctx, conn, t.rel, shadow)
	if err != nil {
		return Result{}, err
	}
	if c.done(t.colType) {
		if shadowType != "" {
			return Result{}, fmt.Errorf("%s is already %sed but its shadow column %s exists: drop it (ALTER TABLE %s DROP COLUMN %s)",
				col.Ident(), c.verb, shadow, t.rel, pgx.Identifier{shadow}.Sanitize())
		}
		o.printf("%s: already %sed (type %s)", col.Ident(), c.verb, t.colType)
		changed, err := c.finish(ctx)
		if err != nil {
			return Result{}, err
		}
		return Result{Already: true, Completed: changed, Elapsed: time.Since(start)}, nil
	}
	qcol, qshadow := pgx.Identifier{col.Name}.Sanitize(), pgx.Identifier{shadow}.Sanitize()
	if shadowType == "" {
		if err := setup(ctx, conn, t, c, shadow, trig, &o); err != nil {
			return Result{}, err
		}
		o.crashAt("setup")
	} else {
		o.printf("%s: resuming: shadow column %s exists", col.Ident(), shadow)
	}
	p := &pass{t: t,
		pending: fmt.Sprintf("t.%s IS NULL AND t.%s IS NOT NULL", qshadow, qcol),
		src:     c.src, set: qshadow + " = v.val" + c.cast, valType: c.valType, convert: c.convert,
	}
	var total int64
	err = conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s t WHERE %s", t.rel, p.pending)).Scan(&total)
	if err != nil {
		return Result{}, err
	}
	var res Result
	batches := 0
	prog := newProgress(&o, col.Ident()+": backfill", total)
	n, err := p.run(ctx, conn, &o, prog, "backfill", &batches)
	res.Rows += n
	if err != nil {
		return res, err
	}
	prog.finish()
	if err := pendingIndex(ctx, conn, t, fmt.Sprintf("%s IS NULL AND %s IS NOT NULL", qshadow, qcol), trig+"_p", shadow, &o); err != nil {
		return res, err
	}
	// Catch up with what the application wrote meanwhile, until a pass
	// finds little enough to do under the swap's lock.
	batches = 0
	o.crashAt("catchup")
	for i := 0; i < 10; i++ {
		prog := newProgress(&o, col.Ident()+": catch-up", 0)
		n, err := p.run(ctx, conn, &o, prog, "catchup", &batches)
		res.Rows += n
		if err != nil {
			return res, err
		}
		prog.finish()
		if n <= int64(o.BatchSize/10) {
			break
		}
	}
	n, err = swap(ctx, conn, t, c, p, shadow, trig, &o)
	res.Rows += n
	if err != nil {
		return res, err
	}
	o.crashAt("swapped")
	if _, err := c.finish(ctx); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	o.printf("%s: %sed %d values in %s (%.0f rows/s)", col.Ident(), c.verb, res.Rows, res.Elapsed.Round(time.Millisecond), res.Rate())
	return res, nil
}

// setup adds the shadow column and the trigger that clears it, in one
// transaction: a rerun finds both or neither.
func setup(ctx context.Context, conn *pgx.Conn, t *table, c *conversion, shadow, trig string, o *Options) error {
	col := t.col
	deps, err := dependents(ctx, conn, t.rel, col.Name)
	if err != nil {
		return err
	}
	var block []string
	for _, d := range deps {
		if c.ignore != "" && strings.HasPrefix(d, "constraint "+c.ignore+" on ") {
			continue
		}
		block = append(block, d)
	}
	if len(block) > 0 {
		return fmt.Errorf("%s: objects depend on the column and would be lost when it is replaced: %s; drop them first (recreate what still makes sense afterwards: an index on a deterministic column works on the ciphertext)",
			col.Ident(), strings.Join(block, "; "))
	}
	var def bool
	if err := conn.QueryRow(ctx, `SELECT atthasdef FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attname = $2`, t.rel, col.Name).Scan(&def); err != nil {
		return err
	}
	if def {
		return fmt.Errorf("%s has a DEFAULT; drop it first (ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT)", col.Ident(), t.rel, pgx.Identifier{col.Name}.Sanitize())
	}
	qcol, qshadow, qtrig := pgx.Identifier{col.Name}.Sanitize(), pgx.Identifier{shadow}.Sanitize(), pgx.Identifier{trig}.Sanitize()
	fn := pgx.Identifier{col.Schema, trig}.Sanitize()
	stmts := []string{
		fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", t.rel, qshadow, c.shadowType),
		fmt.Sprintf(`CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $phiproxy$
BEGIN
  -- phiproxy %s of %s: the value changed, so its converted copy is stale.
  NEW.%s := NULL;
  RETURN NEW;
END
$phiproxy$`, fn, c.verb, col.Ident(), qshadow),
		fmt.Sprintf("CREATE TRIGGER %s BEFORE UPDATE ON %s FOR EACH ROW WHEN (NEW.%s IS DISTINCT FROM OLD.%s) EXECUTE FUNCTION %s()", qtrig, t.rel, qcol, qcol, fn),
		fmt.Sprintf("CREATE TRIGGER %s BEFORE INSERT ON %s FOR EACH ROW WHEN (NEW.%s IS NOT NULL) EXECUTE FUNCTION %s()",
			pgx.Identifier{trig + "_i"}.Sanitize(), t.rel, qshadow, fn),
	}
	err = withLock(ctx, conn, o, "setup", func(tx pgx.Tx) error {
		for _, q := range stmts {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: setup: %w", col.Ident(), err)
	}
	o.printf("%s: added shadow column %s (%s) and trigger %s", col.Ident(), shadow, c.shadowType, trig)
	return nil
}

// swap replaces the column by its shadow in one transaction: lock, convert
// what is left, drop the trigger and the old column, rename the shadow.
func swap(ctx context.Context, conn *pgx.Conn, t *table, c *conversion, p *pass, shadow, trig string, o *Options) (int64, error) {
	col := t.col
	qcol, qshadow := pgx.Identifier{col.Name}.Sanitize(), pgx.Identifier{shadow}.Sanitize()
	fn := pgx.Identifier{col.Schema, trig}.Sanitize()
	var n int64
	start := time.Now()
	err := withLock(ctx, conn, o, "swap", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "LOCK TABLE "+t.rel+" IN ACCESS EXCLUSIVE MODE"); err != nil {
			return err
		}
		batches := 0
		var err error
		n, err = p.run(ctx, tx, o, newProgress(&Options{}, "", 0), "swap-catchup", &batches)
		if err != nil {
			return err
		}
		stmts := []string{
			fmt.Sprintf("DROP TRIGGER %s ON %s", pgx.Identifier{trig}.Sanitize(), t.rel),
			fmt.Sprintf("DROP TRIGGER %s ON %s", pgx.Identifier{trig + "_i"}.Sanitize(), t.rel),
			fmt.Sprintf("DROP FUNCTION %s()", fn),
			fmt.Sprintf("ALTER TABLE %s DROP COLUMN %s", t.rel, qcol),
			fmt.Sprintf("ALTER TABLE %s RENAME COLUMN %s TO %s", t.rel, qshadow, qcol),
		}
		if t.notNull {
			stmts = append(stmts, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL", t.rel, qcol))
		}
		for _, q := range stmts {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		if err := c.after(tx); err != nil {
			return err
		}
		o.crashAt("swap")
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("%s: swap: %w", col.Ident(), err)
	}
	o.printf("%s: swapped in %s (%d rows converted under the lock)", col.Ident(), time.Since(start).Round(time.Millisecond), n)
	return n, nil
}

// withLock runs fn in a transaction with lock_timeout, retrying with
// backoff while the lock is not available.
func withLock(ctx context.Context, conn *pgx.Conn, o *Options, what string, fn func(pgx.Tx) error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", o.LockTimeout.Milliseconds())); err != nil {
				return err
			}
			return fn(tx)
		})
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || (pe.Code != "55P03" && pe.Code != "40P01") || attempt >= o.Attempts {
			return err
		}
		o.printf("%s: %s: the table is busy (attempt %d of %d), retrying in %s", what, pe.Code, attempt, o.Attempts, backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff + rand.N(backoff/2)):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// ensureCheck adds the envelope CHECK constraint if it is missing and
// validates it if it is not yet validated.
func ensureCheck(ctx context.Context, conn *pgx.Conn, col config.Column, out io.Writer) (bool, error) {
	rel := pgx.Identifier{col.Schema, col.Table}.Sanitize()
	name := crypto.EnvelopeCheckName(col)
	var validated bool
	err := conn.QueryRow(ctx, `SELECT convalidated FROM pg_catalog.pg_constraint WHERE conrelid = $1::regclass AND conname = $2 AND contype = 'c'`, rel, name).Scan(&validated)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := conn.Exec(ctx, crypto.EnvelopeCheckSQL(col)); err != nil {
			return false, fmt.Errorf("%s: adding the envelope CHECK constraint: %w", col.Ident(), err)
		}
		fmt.Fprintf(out, "%s: added CHECK constraint %s\n", col.Ident(), name)
	} else if err != nil {
		return false, err
	} else if validated {
		return false, nil
	}
	if _, err := conn.Exec(ctx, crypto.EnvelopeValidateSQL(col)); err != nil {
		return true, fmt.Errorf("%s: validating the envelope CHECK constraint (a value is not a phiproxy envelope): %w", col.Ident(), err)
	}
	fmt.Fprintf(out, "%s: validated CHECK constraint %s: every value is an envelope\n", col.Ident(), name)
	return true, nil
}

// pendingIndex builds, once the backfill is done, a partial index of the
// rows still to convert (CREATE INDEX CONCURRENTLY: no lock against
// writes), so that each catch-up pass, and the last one under the swap's
// lock, reads only those rows instead of the whole table. It depends on
// the column, so the swap's DROP COLUMN drops it. An invalid index left
// by an interrupted build is dropped and built again. ANALYZE of the
// shadow column alone (never of the plaintext one, whose sample values
// would land in pg_statistic) lets the planner see how few rows qualify.
func pendingIndex(ctx context.Context, conn *pgx.Conn, t *table, pending, name, shadow string, o *Options) error {
	if t.partitioned {
		return nil // no concurrent build on a partitioned table: the passes read it all
	}
	qname := pgx.Identifier{t.col.Schema, name}.Sanitize()
	var valid *bool
	err := conn.QueryRow(ctx, `SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::regclass AND c.relname = $2`, t.rel, name).Scan(&valid)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if valid != nil && !*valid {
		if _, err := conn.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+qname); err != nil {
			return fmt.Errorf("%s: dropping the invalid index %s: %w", t.col.Ident(), name, err)
		}
		valid = nil
	}
	if valid == nil {
		start := time.Now()
		q := fmt.Sprintf("CREATE INDEX CONCURRENTLY %s ON %s (%s) WHERE %s",
			pgx.Identifier{name}.Sanitize(), t.rel, t.pkList(""), pending)
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: building the index of rows to catch up: %w", t.col.Ident(), err)
		}
		o.printf("%s: indexed the rows left to catch up (%s)", t.col.Ident(), time.Since(start).Round(time.Millisecond))
	}
	_, err = conn.Exec(ctx, fmt.Sprintf("ANALYZE %s (%s)", t.rel, pgx.Identifier{shadow}.Sanitize()))
	return err
}

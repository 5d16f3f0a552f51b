package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/config"
)

// Conn is what the package needs of a PostgreSQL connection: *pgx.Conn and
// pgx.Tx both have it.
type Conn interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ShadowName is the name of the shadow column Encrypt (suffix "enc") or
// Decrypt (suffix "dec") adds beside col. It is deterministic, so a rerun
// finds it; a name over PostgreSQL's 63 bytes is shortened and suffixed
// with a hash of the column's identity.
func ShadowName(col config.Column, suffix string) string {
	return shortName(col, 63, col.Name+"__phiproxy_"+suffix, col.Name, "__phiproxy_"+suffix)
}

// triggerName is the name of the function and of the UPDATE trigger that
// clear the shadow column when the column changes; the INSERT trigger
// adds "_i", for which it leaves room.
func triggerName(col config.Column, suffix string) string {
	return shortName(col, 61, "phiproxy_"+suffix+"_"+col.Table+"_"+col.Name, "phiproxy_"+suffix+"_"+col.Name, "")
}

func shortName(col config.Column, limit int, full, base, tail string) string {
	if len(full) <= limit {
		return full
	}
	sum := sha256.Sum256([]byte(col.Ident()))
	suffix := "_" + hex.EncodeToString(sum[:4]) + tail
	base = base[:min(len(base), limit-len(suffix))]
	for !utf8.ValidString(base) {
		base = base[:len(base)-1]
	}
	return base + suffix
}

// table is what the migration needs of col's relation, read from the
// catalog.
type table struct {
	col     config.Column
	rel     string   // schema-qualified, quoted
	pk      []string // primary key columns, quoted
	pkTypes []string // their types, format_type spelling
	// colType is col's type in the database ("" when it does not exist),
	// notNull whether it is NOT NULL.
	colType string
	notNull bool
	// partitioned: CREATE INDEX CONCURRENTLY is not possible on it.
	partitioned bool
}

func (t *table) ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// readTable reads col's relation. A table without a primary key is an
// error: batches are primary-key ranges.
func readTable(ctx context.Context, conn Conn, col config.Column) (*table, error) {
	t := &table{col: col, rel: pgx.Identifier{col.Schema, col.Table}.Sanitize()}
	var kind string
	err := conn.QueryRow(ctx, `SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2`, col.Schema, col.Table).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("relation %s does not exist", col.Relation())
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", col.Relation(), err)
	}
	if kind != "r" && kind != "p" {
		return nil, fmt.Errorf("%s is not a table (relkind %s)", col.Relation(), kind)
	}
	t.partitioned = kind == "p"
	rows, err := conn.Query(ctx, `SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = $1::regclass AND i.indisprimary
ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)`, t.rel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", col.Relation(), err)
	}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		if name == col.Name {
			return nil, fmt.Errorf("%s is part of the primary key of %s; a PHI column cannot be", col.Ident(), col.Relation())
		}
		t.pk = append(t.pk, t.ident(name))
		t.pkTypes = append(t.pkTypes, typ)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", col.Relation(), err)
	}
	if len(t.pk) == 0 {
		return nil, fmt.Errorf("%s has no primary key: phiproxy converts a column online in primary-key batches; add one (ALTER TABLE %s ADD PRIMARY KEY …, or an identity column) and run again", col.Relation(), t.rel)
	}
	t.colType, t.notNull, err = columnType(ctx, conn, t.rel, col.Name)
	return t, err
}

// columnType returns name's type in rel and whether it is NOT NULL; ""
// when rel has no such column.
func columnType(ctx context.Context, conn Conn, rel, name string) (string, bool, error) {
	var typ string
	var notNull bool
	err := conn.QueryRow(ctx, `SELECT pg_catalog.format_type(atttypid, atttypmod), attnotnull FROM pg_catalog.pg_attribute
WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped`, rel, name).Scan(&typ, &notNull)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("%s.%s: %w", rel, name, err)
	}
	return typ, notNull, nil
}

// dependents lists the objects that depend on column name of rel
// (indexes, views, constraints, defaults): dropping the column at the swap
// would drop them or fail, so the migration refuses to start.
func dependents(ctx context.Context, conn Conn, rel, name string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, 0)
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1::regclass AND a.attname = $2
  AND d.deptype IN ('n', 'a') ORDER BY 1`, rel, name)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// pkList is "pk1, pk2" qualified with alias (or bare when alias is "").
func (t *table) pkList(alias string) string {
	parts := make([]string, len(t.pk))
	for i, k := range t.pk {
		if alias != "" {
			parts[i] = alias + "." + k
		} else {
			parts[i] = k
		}
	}
	return strings.Join(parts, ", ")
}

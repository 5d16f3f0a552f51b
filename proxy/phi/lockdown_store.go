package phi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
	"github.com/phiproxy/phiproxy/policy"
)

// Where the lockdown switch is kept (policy.Lockdown is the value): a
// file in state_dir and one row in the catalog database, announced with
// NOTIFY. The policy package stays pure; its I/O is here.

// ReadLockdownFile reads state_dir's lockdown file; no file is "off".
func ReadLockdownFile(stateDir string) (policy.Lockdown, error) {
	var l policy.Lockdown
	b, err := os.ReadFile(filepath.Join(stateDir, policy.LockdownFile))
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("%s: %v", filepath.Join(stateDir, policy.LockdownFile), err)
	}
	return l, nil
}

// WriteLockdownFile writes the state file (0600, atomically and durably).
func WriteLockdownFile(stateDir string, l policy.Lockdown) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	return atomicfile.Write(filepath.Join(stateDir, policy.LockdownFile), append(b, '\n'), 0o600)
}

// lockdownDDL creates the table (one row) that carries the switch in the
// database, readable by the catalog role of every instance.
const lockdownDDL = `CREATE SCHEMA IF NOT EXISTS phiproxy;
CREATE TABLE IF NOT EXISTS phiproxy.lockdown (
	only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
	locked     boolean NOT NULL,
	reason     text NOT NULL,
	requested_by text NOT NULL,
	changed_at timestamptz NOT NULL DEFAULT now())`

// ReadLockdownDB reads the database's switch; no table or no row is "off".
func ReadLockdownDB(ctx context.Context, conn *pgx.Conn) (policy.Lockdown, error) {
	var l policy.Lockdown
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('phiproxy.lockdown') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return l, err
	}
	err := conn.QueryRow(ctx, "SELECT locked, reason, requested_by, changed_at FROM phiproxy.lockdown").Scan(&l.On, &l.Reason, &l.By, &l.Since)
	if errors.Is(err, pgx.ErrNoRows) {
		return policy.Lockdown{}, nil
	}
	return l, err
}

// WriteLockdownDB stores l in the database and announces it with NOTIFY,
// in one transaction (the table is created on first use).
func WriteLockdownDB(ctx context.Context, conn *pgx.Conn, l policy.Lockdown) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
			return err
		}
		for _, q := range strings.Split(lockdownDDL, ";\n") {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("lockdown table: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO phiproxy.lockdown (only_row, locked, reason, requested_by, changed_at) VALUES (true, $1, $2, $3, $4)
ON CONFLICT (only_row) DO UPDATE SET locked = EXCLUDED.locked, reason = EXCLUDED.reason, requested_by = EXCLUDED.requested_by, changed_at = EXCLUDED.changed_at`,
			l.On, l.Reason, l.By, l.Since); err != nil {
			return fmt.Errorf("lockdown table: %w", err)
		}
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", policy.LockdownChannel, fmt.Sprint(l.On))
		return err
	})
}

package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
)

// Lockdown is the switch's state: on, why, who asked, when. An instance is
// locked if its state file or the database says so.
type Lockdown struct {
	On     bool      `json:"on"`
	Reason string    `json:"reason"`
	By     string    `json:"by"`
	Since  time.Time `json:"since"`
}

// LockdownFile is the state file's name in state_dir.
const LockdownFile = "lockdown.json"

// LockdownChannel is the NOTIFY channel a switch is announced on.
const LockdownChannel = "phiproxy_lockdown"

// MaxReasonBytes bounds a reason.
const MaxReasonBytes = 500

// CheckReason validates a switch's reason: required, bounded, one line.
func CheckReason(reason string) error {
	r := strings.TrimSpace(reason)
	switch {
	case r == "":
		return errors.New("lockdown needs a reason (--reason TEXT): it is recorded in the audit trail")
	case len(r) > MaxReasonBytes:
		return fmt.Errorf("lockdown reason is longer than %d bytes", MaxReasonBytes)
	case strings.ContainsAny(r, "\r\n"):
		return errors.New("lockdown reason must be one line")
	}
	return nil
}

// ReadLockdownFile reads state_dir's lockdown file; no file is "off".
func ReadLockdownFile(stateDir string) (Lockdown, error) {
	var l Lockdown
	b, err := os.ReadFile(filepath.Join(stateDir, LockdownFile))
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("%s: %v", filepath.Join(stateDir, LockdownFile), err)
	}
	return l, nil
}

// WriteLockdownFile writes the state file (0600, atomically and durably).
func WriteLockdownFile(stateDir string, l Lockdown) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	return atomicfile.Write(filepath.Join(stateDir, LockdownFile), append(b, '\n'), 0o600)
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
func ReadLockdownDB(ctx context.Context, conn *pgx.Conn) (Lockdown, error) {
	var l Lockdown
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('phiproxy.lockdown') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return l, err
	}
	err := conn.QueryRow(ctx, "SELECT locked, reason, requested_by, changed_at FROM phiproxy.lockdown").Scan(&l.On, &l.Reason, &l.By, &l.Since)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lockdown{}, nil
	}
	return l, err
}

// WriteLockdownDB stores l in the database and announces it with NOTIFY,
// in one transaction (the table is created on first use).
func WriteLockdownDB(ctx context.Context, conn *pgx.Conn, l Lockdown) error {
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
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", LockdownChannel, fmt.Sprint(l.On))
		return err
	})
}

// Describe is a one-line description for logs and audit details.
func (l Lockdown) Describe(source string) string {
	state := "off"
	if l.On {
		state = "on"
	}
	return fmt.Sprintf("lockdown %s (%s): %s — by %s", state, source, l.Reason, l.By)
}

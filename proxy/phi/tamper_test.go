package phi

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 18, item 9: ciphertext moved to another column, tampered with, or
// under a key id no keyset holds, written around the proxy. Reading it
// through the proxy fails that statement with XX000 naming the column,
// never a value; the session goes on.
func TestCiphertextMovedOrTampered(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	via := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	for id, ssn := range map[int]string{1: "tm-111", 2: "tm-222", 3: "tm-333", 4: "tm-444", 5: "tm-555"} {
		mustExec(t, ctx, via, "INSERT INTO patients (id, ssn, diagnosis) VALUES ($1, $2, $3)", id, ssn, "diag-"+ssn)
	}
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	// Another column's ciphertext (its key's associated data differs).
	mustExec(t, ctx, direct, "UPDATE patients SET diagnosis = ssn WHERE id = 2")
	// One byte of the Tink payload flipped.
	mustExec(t, ctx, direct, "UPDATE patients SET ssn = set_byte(ssn, length(ssn) - 1, get_byte(ssn, length(ssn) - 1) # 1) WHERE id = 3")
	// A key id no loaded keyset has (the 4 bytes after the 0x01 prefix).
	mustExec(t, ctx, direct, `UPDATE patients SET ssn = overlay(ssn placing '\x00000000'::bytea from 5 for 4) WHERE id = 4`)
	// Another row's ciphertext, same column: decrypts (the envelope binds
	// a value to its column's key, not to its row: docs/security.md).
	mustExec(t, ctx, direct, "UPDATE patients SET ssn = (SELECT ssn FROM patients WHERE id = 1) WHERE id = 5")

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		conn := connect(t, ctx, p.dsn(), mode)
		for _, tc := range []struct {
			sql, column string
			id          int
		}{
			{"SELECT diagnosis FROM patients WHERE id = $1", "public.patients.diagnosis", 2},
			{"SELECT ssn FROM patients WHERE id = $1", "public.patients.ssn", 3},
			{"SELECT id, ssn FROM patients WHERE id = $1", "public.patients.ssn", 4},
		} {
			vals, err := readAll(ctx, conn, tc.sql, tc.id)
			expectCode(t, err, "XX000", tc.sql)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || !strings.Contains(pe.Message, tc.column) {
				t.Fatalf("%v %s (id %d): %v, want the error to name %s", mode, tc.sql, tc.id, err, tc.column)
			}
			for _, v := range vals {
				if strings.Contains(string(v), "tm-") {
					t.Fatalf("%v: a value reached the client with the error: %q", mode, v)
				}
			}
			if strings.Contains(err.Error(), "tm-") || strings.Contains(strings.ToLower(err.Error()), "x504801") {
				t.Fatalf("%v: the error quotes a value: %v", mode, err)
			}
			stillWorks(t, ctx, conn)
		}
		var moved string
		if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 5).Scan(&moved); err != nil || moved != "tm-111" {
			t.Fatalf("%v: a ciphertext copied from another row read %q, %v", mode, moved, err)
		}
	}
	if strings.Contains(p.logs.String(), "tm-") {
		t.Fatal("a value reached the log")
	}
}

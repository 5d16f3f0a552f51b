package phi

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Issue 18, item 9: ciphertext moved to another column, tampered with, or
// under a key id no keyset holds, written around the proxy. Reading it
// through the proxy fails that statement with XX000 naming the column,
// never a value; the session goes on.
func TestCiphertextMovedOrTampered(t *testing.T) {
	ctx, p := start(t)
	via := p.via(pgx.QueryExecModeCacheStatement)
	for id, ssn := range map[int]string{1: "tm-111", 2: "tm-222", 3: "tm-333", 4: "tm-444", 5: "tm-555"} {
		mustExec(t, ctx, via, "INSERT INTO patients (id, ssn, diagnosis) VALUES ($1, $2, $3)", id, ssn, "diag-"+ssn)
	}
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
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
		conn := p.via(mode)
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
			if pe := pgError(err); pe == nil || !strings.Contains(pe.Message, tc.column) {
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

// Ciphertext moved to another column, tampered with, or under a key id
// the keyset does not have: the statement fails naming the column, no
// plaintext of the bad value is served, and the audit event has the
// error. Ciphertext moved to another row of the same column decrypts to
// the value it was made for (the key name is the associated data, not
// the row): documented in docs/threat-model.md.
func TestTamperedCiphertextFailsNamingTheColumn(t *testing.T) {
	ctx, p := startStrictAudit(t)
	c := p.via(pgx.QueryExecModeCacheStatement)
	for i, v := range []string{"111-11-1111", "222-22-2222", "333-33-3333", "444-44-4444", "555-55-5555"} {
		mustExec(t, ctx, c, "INSERT INTO patients (id, ssn, diagnosis) VALUES ($1, $2, $3)", i+1, v, "dx-"+v)
	}
	d := p.direct(pgx.QueryExecModeSimpleProtocol)
	for _, q := range []string{
		// 2: diagnosis's ciphertext (another key) moved into ssn.
		"UPDATE patients SET ssn = (SELECT diagnosis FROM patients WHERE id = 1) WHERE id = 2",
		// 3: a byte of the tag flipped.
		"UPDATE patients SET ssn = overlay(ssn placing decode(lpad(to_hex(get_byte(ssn, length(ssn) - 1) # 1), 2, '0'), 'hex') from length(ssn)) WHERE id = 3",
		// 4: a key id the keyset does not have (bytes 4..7 of the envelope).
		"UPDATE patients SET ssn = overlay(ssn placing '\\xdeadbeef'::bytea from 5) WHERE id = 4",
		// 5: id 1's ciphertext moved to row 5 of the same column.
		"UPDATE patients SET ssn = (SELECT ssn FROM patients WHERE id = 1) WHERE id = 5",
	} {
		mustExec(t, ctx, d, q)
	}
	for _, id := range []int{2, 3, 4} {
		var v string
		err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", id).Scan(&v)
		if err == nil || !strings.Contains(err.Error(), "public.patients.ssn") || v != "" {
			t.Fatalf("row %d: %q %v, want an error naming public.patients.ssn", id, v, err)
		}
		for _, bad := range []string{"111-11", "222-22", "333-33", "444-44", "\\x50"} {
			if strings.Contains(err.Error(), bad) {
				t.Fatalf("row %d: the error holds %q: %v", id, bad, err)
			}
		}
	}
	var v string
	if err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 5").Scan(&v); err != nil || v != "111-11-1111" {
		t.Fatalf("a ciphertext moved within its column: %q %v", v, err)
	}
	p.phi.Close()
	failed := 0
	for _, e := range statementEvents(p.trail()) {
		if e.Action == "read" && e.Error == "XX000" {
			failed++
		}
	}
	if failed != 3 {
		t.Fatalf("%d read events with error XX000, want 3", failed)
	}
	scanForCanary(t, p.dir, "222-22-2222")
}

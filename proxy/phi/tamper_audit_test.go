package phi

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

// Ciphertext moved to another column, tampered with, or under a key id
// the keyset does not have: the statement fails naming the column, no
// plaintext of the bad value is served, and the audit event has the
// error. Ciphertext moved to another row of the same column decrypts to
// the value it was made for (the key name is the associated data, not
// the row): documented in docs/threat-model.md.
func TestTamperedCiphertextFailsNamingTheColumn(t *testing.T) {
	ctx := testCtx(t)
	cfg, dir := auditCfg(t, config.AuditStrict)
	p := startAudited(t, cfg, dir)
	c := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	for i, v := range []string{"111-11-1111", "222-22-2222", "333-33-3333", "444-44-4444", "555-55-5555"} {
		mustExec(t, ctx, c, "INSERT INTO patients (id, ssn, diagnosis) VALUES ($1, $2, $3)", i+1, v, "dx-"+v)
	}
	d := direct(t, ctx)
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
	for _, e := range statementEvents(trailEvents(t, cfg.Audit.File.Dir)) {
		if e.Action == "read" && e.Error == "XX000" {
			failed++
		}
	}
	if failed != 3 {
		t.Fatalf("%d read events with error XX000, want 3", failed)
	}
	scanForCanary(t, dir, "222-22-2222")
}

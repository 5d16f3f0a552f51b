package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestEncryptOnlineResumesAfterKills encrypts two plaintext PHI columns of
// a live table while a writer updates and inserts through phiproxy, and
// kills the encrypt process (SIGKILL, through the PHIPROXY_ENCRYPT_CRASH_AT
// hook) at six points: after setup, between reading and writing a batch,
// after a committed batch, at the start of the catch-up, inside the swap
// transaction and after the swap committed. Each rerun resumes; the last
// one finds the column encrypted and validates the CHECK constraint.
// Afterwards every row decrypts through the proxy to the value last
// written, and after VACUUM FULL and CHECKPOINT no plaintext SSN is left in
// the database's files (the non-PHI note column is the scan's control).
func TestEncryptOnlineResumesAfterKills(t *testing.T) {
	// PHIPROXY_ENCRYPT_TEST_ROWS sizes the table (the 1 M rows is
	// a manual run; make test keeps it small).
	rows := 3000
	if v, err := strconv.Atoi(os.Getenv("PHIPROXY_ENCRYPT_TEST_ROWS")); err == nil && v > 0 {
		rows = v
	}
	f := newEncFixture(t, "enc_online", rows)
	p := startProxy(t, proxyOpts{catalogDB: f.db})
	w := startWriter(t, f, appDSN(p.addr(), f.db), int64(rows))

	args := []string{"encrypt", "--column", "public.people.ssn", "--column", "public.people.dob", "--batch-size", "200", "--rate", strconv.Itoa(max(4000, rows/2))}
	for _, point := range []string{"setup", "backfill-read:2", "backfill:3", "catchup", "swap", "swapped"} {
		out, st := f.run(t, []string{"PHIPROXY_ENCRYPT_CRASH_AT=" + point}, args...)
		if !killed(st) {
			t.Fatalf("encrypt with crash point %s was not killed there: %v\n%s", point, st, out)
		}
		t.Logf("killed at %s:\n%s", point, out)
	}
	out := f.mustRun(t, args...)
	t.Logf("final run:\n%s", out)
	for _, want := range []string{"public.people.ssn: already encrypted", "validated CHECK constraint phiproxy_ssn_envelope",
		"public.people.dob: swapped", "validated CHECK constraint phiproxy_dob_envelope", "audit: encrypt recorded"} {
		if !strings.Contains(out, want) {
			t.Errorf("final run lacks %q", want)
		}
	}
	// The trail has what encrypt did, searchable by column.
	if ev := f.mustRun(t, "audit", "search", "--action", "encrypt", "--column", "public.people.dob", "--format", "json"); strings.Count(ev, `"action":"encrypt"`) != 1 ||
		!strings.Contains(ev, `"relations":["public.people"]`) || strings.Contains(ev, "SSN-") {
		t.Errorf("audit search for the encrypt event of public.people.dob:\n%s", ev)
	}
	// ssn was swapped by the run killed after its swap: the rerun that
	// validated it recorded it.
	if ev := f.mustRun(t, "audit", "search", "--action", "encrypt", "--column", "public.people.ssn", "--format", "json"); strings.Count(ev, `"action":"encrypt"`) != 1 ||
		!strings.Contains(ev, "completed what an interrupted run left") {
		t.Errorf("audit search for the encrypt event of public.people.ssn:\n%s", ev)
	}
	w.finish(t)
	if w.writes < 50 {
		t.Fatalf("the writer committed only %d writes during the run", w.writes)
	}
	t.Logf("writer: %d writes committed", w.writes)

	// Idempotent: once more changes nothing.
	if out := f.mustRun(t, args...); strings.Count(out, "already encrypted") != 2 {
		t.Fatalf("rerun on an encrypted table:\n%s", out)
	}

	direct := encDirect(t, f)
	ctx := context.Background()
	var bad int
	if err := direct.QueryRow(ctx, `SELECT count(*) FROM people WHERE substring(ssn from 1 for 3) <> '\x504801'::bytea
  OR substring(dob from 1 for 3) <> '\x504801'::bytea`).Scan(&bad); err != nil || bad != 0 {
		t.Fatalf("values without the envelope header: %d (%v)", bad, err)
	}
	var leftovers int
	if err := direct.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = 'people'::regclass AND attname LIKE '%phiproxy%' AND NOT attisdropped)
  + (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'people'::regclass) + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'phiproxy_enc%')`).Scan(&leftovers); err != nil || leftovers != 0 {
		t.Fatalf("shadow columns, triggers or functions left: %d (%v)", leftovers, err)
	}
	if _, err := direct.Exec(ctx, "UPDATE people SET note = 'x', ssn = 'plain' WHERE id = 1"); err == nil || !strings.Contains(err.Error(), "23514") {
		t.Fatalf("plaintext written around the proxy: %v", err)
	}

	// A proxy that started without a phi map needs a restart to get one
	// (one that has a phi map takes the new column at SIGHUP).
	p.cmd.Process.Kill() // its cleanup waits for it
	p = startProxy(t, proxyOpts{catalogDB: f.db, extra: f.section})
	f.checkPeople(t, connectT(t, appDSN(p.addr(), f.db)))

	// check finds nothing wrong with the encrypted columns: bytea, no
	// plaintext in its sample, the envelope constraints in their form.
	out, _ = f.run(t, nil, "check", "--format", "json")
	for _, kind := range []string{"column_not_bytea", "column_plaintext", "constraint_missing", "constraint_old_form", "values_unknown_key", "keyset_missing"} {
		if strings.Contains(out, `"kind":"`+kind+`"`) {
			t.Errorf("phiproxy check after encrypt reports %s:\n%s", kind, out)
		}
	}
	if !strings.Contains(out, `"findings"`) {
		t.Fatalf("phiproxy check output:\n%s", out)
	}

	// No plaintext SSN in the database's files once dead tuples are gone.
	super := connectT(t, fixture.cluster.DSN(fixture.cluster.SuperUser, fixture.cluster.SuperPassword, f.db, "sslmode=disable"))
	for _, q := range []string{"VACUUM FULL people", "VACUUM FULL pg_catalog.pg_statistic", "CHECKPOINT"} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var dbOID uint32
	if err := super.QueryRow(ctx, "SELECT oid FROM pg_database WHERE datname = current_database()").Scan(&dbOID); err != nil {
		t.Fatal(err)
	}
	hits, files, size := scanTree(t, filepath.Join(fixture.cluster.DataDir, "base", fmt.Sprint(dbOID)), map[string][]byte{
		"ssn":            []byte("SSN-" + f.tag),
		"note (control)": []byte("NOTE-" + f.tag),
	})
	t.Logf("scanned %d files, %d bytes", files, size)
	if len(hits["note (control)"]) == 0 {
		t.Fatal("the scan did not find the non-PHI control value: it cannot see the heap")
	}
	if len(hits["ssn"]) > 0 {
		t.Fatalf("plaintext SSNs left in %v", hits["ssn"])
	}
}

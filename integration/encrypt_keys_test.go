package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/crypto"
)

// primaryKeyID returns the primary key id of key name from `keys list`.
func (f *encFixture) primaryKeyID(t *testing.T, name string) uint32 {
	t.Helper()
	out := f.mustRun(t, "keys", "list", "--json")
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r struct {
			Key    string `json:"key"`
			KeyID  uint32 `json:"key_id"`
			Status string `json:"status"`
		}
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		if r.Key == name && r.Status == "primary" {
			return r.KeyID
		}
	}
	t.Fatalf("no primary key for %s:\n%s", name, out)
	return 0
}

// TestRotateReencryptRetire: after `keys rotate`, reads through the proxy
// stay correct; `keys retire --confirm-unused` refuses while values under
// the old key remain; `reencrypt` moves every value to the new key while a
// writer works through the proxy; then retire succeeds and reads are still
// correct after the proxy reloads without the old key.
func TestRotateReencryptRetire(t *testing.T) {
	f := newEncFixture(t, "enc_rotate", 1500)
	f.mustRun(t, "encrypt", "--column", "public.people.ssn", "--column", "public.people.dob")
	p := startProxy(t, proxyOpts{catalogDB: f.db, extra: f.section})
	dsn := appDSN(p.addr(), f.db)
	read := connectT(t, dsn)
	f.checkPeople(t, read)

	old := f.primaryKeyID(t, "public.people.ssn")
	f.mustRun(t, "keys", "rotate", "--column", "public.people.ssn")
	next := f.primaryKeyID(t, "public.people.ssn")
	reload(t, p, "")
	f.checkPeople(t, read)

	oldID := fmt.Sprint(old)
	retire := []string{"keys", "retire", "--column", "public.people.ssn", "--key-id", oldID, "--confirm-unused"}
	out, st := f.run(t, nil, retire...)
	if st.ExitCode() != 1 || !strings.Contains(out, "still encrypted under key id "+oldID) || !strings.Contains(out, "public.people.ssn: 1500") {
		t.Fatalf("retire while 1500 values use the old key: exit %d\n%s", st.ExitCode(), out)
	}
	f.checkPeople(t, read)

	w := startWriter(t, f, dsn, 1500)
	out = f.mustRun(t, "reencrypt", "--column", "public.people.ssn", "--batch-size", "300", "--rate", "3000")
	w.finish(t)
	if len(w.refused) > 0 || w.writes == 0 {
		t.Fatalf("writer through the proxy during reencrypt: %d writes, refused %v", w.writes, w.refused)
	}
	if !strings.Contains(out, fmt.Sprintf("every value is under primary key id %d", next)) || !strings.Contains(out, "audit: reencrypt recorded") {
		t.Fatalf("reencrypt output:\n%s", out)
	}
	f.checkPeople(t, read)
	var under int
	err := encDirect(t, f).QueryRow(context.Background(), "SELECT count(*) FROM people WHERE substring(ssn from 1 for 8) <> $1",
		crypto.KeyPrefix(next)).Scan(&under)
	if err != nil || under != 0 {
		t.Fatalf("values not under the new key %d: %d (%v)", next, under, err)
	}

	out = f.mustRun(t, retire...)
	if !strings.Contains(out, "no value of public.people.ssn uses key id "+oldID) || !strings.Contains(out, "retired key id "+oldID) {
		t.Fatalf("retire output:\n%s", out)
	}
	reload(t, p, "")
	f.checkPeople(t, read)
	// Nothing left to do: reencrypt is idempotent.
	if out := f.mustRun(t, "reencrypt"); !strings.Contains(out, "public.people.ssn: every value is under primary key") {
		t.Fatalf("second reencrypt:\n%s", out)
	}
}

// TestDecryptReversesEncrypt turns the encrypted columns back into
// plaintext of their logical types, and refuses without the flag.
func TestDecryptReversesEncrypt(t *testing.T) {
	f := newEncFixture(t, "enc_decrypt", 1200)
	f.mustRun(t, "encrypt", "--column", "public.people.ssn", "--column", "public.people.dob")
	args := []string{"decrypt", "--column", "public.people.ssn", "--column", "public.people.dob", "--batch-size", "250"}
	if out, st := f.run(t, nil, args...); st.ExitCode() != 2 || !strings.Contains(out, "--i-understand-this-writes-plaintext") {
		t.Fatalf("decrypt without the flag: exit %d\n%s", st.ExitCode(), out)
	}
	args = append(args, "--i-understand-this-writes-plaintext")
	out, st := f.run(t, []string{"PHIPROXY_ENCRYPT_CRASH_AT=backfill:2"}, args...)
	if !killed(st) {
		t.Fatalf("decrypt was not killed at backfill:2: %v\n%s", st, out)
	}
	out = f.mustRun(t, args...)
	if !strings.Contains(out, "public.people.ssn: decrypted") || !strings.Contains(out, "audit: decrypt recorded") {
		t.Fatalf("decrypt output:\n%s", out)
	}
	direct := encDirect(t, f)
	f.checkPeople(t, direct) // text and date again, read around any proxy
	var types string
	var checks int
	err := direct.QueryRow(context.Background(), `SELECT string_agg(format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ',' ORDER BY attname),
  (SELECT count(*) FROM pg_constraint WHERE conrelid = 'people'::regclass AND contype = 'c')
FROM pg_attribute WHERE attrelid = 'people'::regclass AND attname IN ('ssn', 'dob')`).Scan(&types, &checks)
	if err != nil || types != "date,text not null" || checks != 0 {
		t.Fatalf("after decrypt: types %q, %d CHECK constraints (%v)", types, checks, err)
	}
	if out := f.mustRun(t, args...); strings.Count(out, "already decrypted") != 2 {
		t.Fatalf("second decrypt:\n%s", out)
	}
}

// TestEncryptRefusesATableWithoutPrimaryKey: batches are primary-key
// ranges, so a table without one is refused with a clear message and
// left as it was.
func TestEncryptRefusesATableWithoutPrimaryKey(t *testing.T) {
	f := newEncFixture(t, "enc_nopk", 10)
	direct := f.addRelation(t, "nopk", "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('a'), ('b')",
		"  public.notes:\n    body: {type: text, mode: randomized}\n")
	out, st := f.run(t, nil, "encrypt", "--column", "public.notes.body")
	if st.ExitCode() != 1 || !strings.Contains(out, "public.notes has no primary key") {
		t.Fatalf("encrypt of a table without a primary key: exit %d\n%s", st.ExitCode(), out)
	}
	var cols int
	if err := direct.QueryRow(context.Background(), "SELECT count(*) FROM pg_attribute WHERE attrelid = 'notes'::regclass AND attnum > 0").Scan(&cols); err != nil || cols != 1 {
		t.Fatalf("notes changed: %d columns (%v)", cols, err)
	}
}

// TestEncryptStopsAtAValueOfTheWrongType: a text column configured as
// date holding something that is not a date stops the run with an error
// that names the column and the row's primary key, never the value; once
// the row is fixed the rerun finishes.
func TestEncryptStopsAtAValueOfTheWrongType(t *testing.T) {
	f := newEncFixture(t, "enc_badvalue", 10)
	direct := f.addRelation(t, "visits", "CREATE TABLE visits (id int PRIMARY KEY, seen text); INSERT INTO visits SELECT i, '2020-01-0' || i FROM generate_series(1, 9) i; UPDATE visits SET seen = 'CANARY-not-a-date' WHERE id = 7",
		"  public.visits:\n    seen: {type: date, mode: randomized}\n")
	ctx := context.Background()
	out, st := f.run(t, nil, "encrypt", "--column", "public.visits.seen", "--batch-size", "4")
	if st.ExitCode() != 1 || !strings.Contains(out, "public.visits.seen") || !strings.Contains(out, `row ("id") = (7)`) || strings.Contains(out, "CANARY") {
		t.Fatalf("encrypt of a bad value: exit %d\n%s", st.ExitCode(), out)
	}
	if _, err := direct.Exec(ctx, "UPDATE visits SET seen = '2020-01-07' WHERE id = 7"); err != nil {
		t.Fatal(err)
	}
	if out := f.mustRun(t, "encrypt", "--column", "public.visits.seen", "--batch-size", "4"); !strings.Contains(out, "public.visits.seen: encrypted") {
		t.Fatalf("rerun after the fix:\n%s", out)
	}
}

// TestEncryptSecondColumnWhileProxyServesTheFirst is the usual adoption
// of one more column: the proxy already encrypts people.dob and serves a
// writer that updates ssn (plaintext to it) and dob; `encrypt` of ssn is
// interrupted with SIGINT and rerun; then the proxy takes the new phi map
// at SIGHUP and every row reads back as last written.
func TestEncryptSecondColumnWhileProxyServesTheFirst(t *testing.T) {
	const rows = 2000
	f := newEncFixture(t, "enc_second", rows)
	f.mustRun(t, "encrypt", "--column", "public.people.dob")
	dobOnly := strings.Replace(f.section, "    ssn: {type: text, mode: deterministic, default: plaintext}\n", "", 1)
	if dobOnly == f.section {
		t.Fatal("BUG: the ssn line is not in the section")
	}
	p := startProxy(t, proxyOpts{catalogDB: f.db, extra: dobOnly})
	dsn := appDSN(p.addr(), f.db)
	w := startWriter(t, f, dsn, rows)

	cmd := exec.Command(fixture.binary, "encrypt", "--column", "public.people.ssn", "--batch-size", "100", "--rate", "1000", "--config", f.cfg)
	cmd.Env = append(os.Environ(), "PGPASSFILE="+fixture.pgpass)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(out.String(), "context canceled") {
		t.Fatalf("encrypt after SIGINT: %v\n%s", err, out.String())
	}
	res := f.mustRun(t, "encrypt", "--column", "public.people.ssn", "--batch-size", "100")
	if !strings.Contains(res, "resuming") || !strings.Contains(res, "public.people.ssn: swapped") {
		t.Fatalf("rerun after SIGINT:\n%s", res)
	}
	time.Sleep(100 * time.Millisecond) // the writer meets the swapped column
	w.finish(t)
	if w.writes < 50 {
		t.Fatalf("the writer committed only %d writes", w.writes)
	}
	t.Logf("writer: %d writes, refused after the swap: %v", w.writes, w.refused)
	for _, r := range w.refused {
		if !strings.HasPrefix(r, "op 0") && !strings.HasPrefix(r, "op 2") {
			t.Fatalf("the proxy refused a write of the encrypted column: %s", r)
		}
	}
	os.WriteFile(p.config, []byte(strings.Replace(mustRead(t, p.config), dobOnly, f.section, 1)), 0o600)
	reload(t, p, "")
	f.checkPeople(t, connectT(t, dsn))
}

// TestEncryptPartitionedTableWithCompositeKey: keyset pagination over a
// two-column primary key, across partitions, resumed after a kill.
func TestEncryptPartitionedTableWithCompositeKey(t *testing.T) {
	f := newEncFixture(t, "enc_parted", 10)
	section := "  public.events:\n    ssn: {type: text, mode: deterministic, default: plaintext}\n"
	f.addRelation(t, "events", `CREATE TABLE events (region text, id int, ssn text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE events_east PARTITION OF events FOR VALUES IN ('east');
CREATE TABLE events_west PARTITION OF events FOR VALUES IN ('west');
INSERT INTO events SELECT CASE WHEN i % 3 = 0 THEN 'east' ELSE 'west' END, i, 'SSN-E-' || i FROM generate_series(1, 1500) i`, section)
	args := []string{"encrypt", "--column", "public.events.ssn", "--batch-size", "100"}
	if out, st := f.run(t, []string{"PHIPROXY_ENCRYPT_CRASH_AT=backfill:4"}, args...); !killed(st) {
		t.Fatalf("not killed at backfill:4: %v\n%s", st, out)
	}
	if out := f.mustRun(t, args...); !strings.Contains(out, "public.events.ssn: encrypted") {
		t.Fatalf("encrypt of a partitioned table:\n%s", out)
	}
	// people is still plaintext here: the proxy gets events only.
	keysLine, _, _ := strings.Cut(f.section, "phi:")
	p := startProxy(t, proxyOpts{catalogDB: f.db, extra: keysLine + "phi:\n" + section})
	conn := connectT(t, appDSN(p.addr(), f.db))
	rows, err := conn.Query(context.Background(), "SELECT id, ssn FROM events")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var id int
		var ssn string
		if err := rows.Scan(&id, &ssn); err != nil {
			t.Fatal(err)
		}
		if ssn != fmt.Sprintf("SSN-E-%d", id) {
			t.Fatalf("events id %d: %q", id, ssn)
		}
		n++
	}
	if rows.Err() != nil || n != 1500 {
		t.Fatalf("%d rows through the proxy (%v)", n, rows.Err())
	}
}

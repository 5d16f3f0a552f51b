package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// encFixture is a database with a plaintext table people(id, name, ssn,
// dob, note) owned by app, keys for its PHI columns, and the config the
// encrypt, reencrypt, decrypt and keys commands run with. ssn values and
// notes carry the fixture's tag, so a scan of the data directory can find
// them; note is not PHI (the scan's control).
type encFixture struct {
	db      string
	tag     string
	cfg     string // CLI config: catalog_dsn to db, keys, phi
	section string // keys: and phi: for a proxy's config
	want    *peopleState
}

const encPHI = `phi:
  public.people:
    ssn: {type: text, mode: deterministic, default: plaintext}
    dob: {type: date, mode: randomized, default: plaintext}
`

// peopleState is the value last written to each row.
type peopleState struct {
	mu  sync.Mutex
	ssn map[int64]string
	dob map[int64]string // "" for NULL
}

func (s *peopleState) set(id int64, ssn *string, dob *string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ssn != nil {
		s.ssn[id] = *ssn
	}
	if dob != nil {
		s.dob[id] = *dob
	}
}

func newEncFixture(t *testing.T, name string, rows int) *encFixture {
	t.Helper()
	e := fixture
	ctx := context.Background()
	tag := make([]byte, 6)
	rand.Read(tag)
	f := &encFixture{db: name, tag: "T" + hex.EncodeToString(tag), want: &peopleState{ssn: map[int64]string{}, dob: map[int64]string{}}}
	if err := e.cluster.Exec(ctx, "CREATE DATABASE "+name+" OWNER app"); err != nil {
		t.Fatal(err)
	}
	conn := encDirect(t, f)
	_, err := conn.Exec(ctx, fmt.Sprintf(`
CREATE TABLE people (id bigserial PRIMARY KEY, name text, ssn text NOT NULL, dob date, note text);
INSERT INTO people (name, ssn, dob, note)
SELECT 'name ' || i, 'SSN-%[1]s-' || i, CASE WHEN i %% 10 = 0 THEN NULL ELSE date '1950-01-01' + i END, 'NOTE-%[1]s-' || i
FROM generate_series(1, %[2]d) AS i`, f.tag, rows))
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 1; i <= rows; i++ {
		f.want.ssn[int64(i)] = fmt.Sprintf("SSN-%s-%d", f.tag, i)
		if i%10 != 0 {
			f.want.dob[int64(i)] = base.AddDate(0, 0, i).Format("2006-01-02")
		} else {
			f.want.dob[int64(i)] = ""
		}
	}
	dir := t.TempDir()
	f.section = fmt.Sprintf("keys: {dir: %s, kek: \"file://%s\"}\n", filepath.Join(dir, "keysets"), filepath.Join(dir, "kek.json")) + encPHI
	f.cfg = filepath.Join(dir, "phiproxy.yaml")
	head := fmt.Sprintf("listen: 127.0.0.1:1\nupstream: {address: %s, sslmode: disable}\ncatalog_dsn: postgres://%s@%s/%s?sslmode=disable\n",
		e.cluster.Addr(), e.cluster.SuperUser, e.cluster.Addr(), name)
	if err := os.WriteFile(f.cfg, []byte(head+f.section), 0o600); err != nil {
		t.Fatal(err)
	}
	f.mustRun(t, "keys", "init")
	return f
}

// encDirect connects to the fixture's database as app, around any proxy.
func encDirect(t *testing.T, f *encFixture) *pgx.Conn {
	t.Helper()
	return connectT(t, appDSN(fixture.cluster.Addr(), f.db))
}

func connectT(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// addRelation creates, around any proxy, what ddl makes, and points the
// fixture at a copy of its config (name.yaml) whose phi: map also has
// section, with that section's keys; it returns its connection to the
// database.
func (f *encFixture) addRelation(t *testing.T, name, ddl, section string) *pgx.Conn {
	t.Helper()
	direct := encDirect(t, f)
	if _, err := direct.Exec(context.Background(), ddl); err != nil {
		t.Fatal(err)
	}
	cfg := mustRead(t, f.cfg)
	f.cfg = filepath.Join(filepath.Dir(f.cfg), name+".yaml")
	if err := os.WriteFile(f.cfg, []byte(cfg+section), 0o600); err != nil {
		t.Fatal(err)
	}
	f.mustRun(t, "keys", "create")
	return direct
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// run runs the phiproxy binary with the fixture's config and extra
// environment; it returns the combined output and the process state.
func (f *encFixture) run(t *testing.T, env []string, args ...string) (string, *os.ProcessState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, fixture.binary, append(args, "--config", f.cfg)...)
	cmd.Env = append(append(os.Environ(), "PGPASSFILE="+fixture.pgpass), env...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState
}

func (f *encFixture) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, st := f.run(t, nil, args...)
	if st == nil || st.ExitCode() != 0 {
		t.Fatalf("phiproxy %s: %v\n%s", strings.Join(args, " "), st, out)
	}
	return out
}

// killed reports whether the process died of SIGKILL.
func killed(st *os.ProcessState) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// checkPeople reads every row through conn (a proxy that decrypts) and
// compares it with the values last written.
func (f *encFixture) checkPeople(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT id, ssn, dob FROM people")
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	f.want.mu.Lock()
	defer f.want.mu.Unlock()
	var bad []string
	for rows.Next() {
		var id int64
		var ssn string
		var dob *time.Time
		if err := rows.Scan(&id, &ssn, &dob); err != nil {
			t.Fatal(err)
		}
		got++
		d := ""
		if dob != nil {
			d = dob.Format("2006-01-02")
		}
		if want, ok := f.want.ssn[id]; !ok || ssn != want || d != f.want.dob[id] {
			if len(bad) < 5 {
				bad = append(bad, fmt.Sprintf("id %d: got (%s, %q), want (%s, %q)", id, ssn, d, want, f.want.dob[id]))
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if got != len(f.want.ssn) || len(bad) > 0 {
		t.Fatalf("people through the proxy: %d rows, want %d; %s", got, len(f.want.ssn), strings.Join(bad, "; "))
	}
}

// writer updates and inserts rows of people through dsn (a proxy) until
// stopped, recording every committed value in f.want. An operation that
// the server refuses (once encrypt swapped its column, plaintext is
// refused) is not tried again.
type writer struct {
	stop   chan struct{}
	done   chan struct{}
	writes int
	errs   []error
	// refused are the operations the server refused, with the error.
	refused []string
}

func startWriter(t *testing.T, f *encFixture, dsn string, maxID int64) *writer {
	t.Helper()
	conn := connectT(t, dsn)
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx := context.Background()
		off := map[int]bool{}
		next := maxID
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			time.Sleep(time.Millisecond) // an application's pace, not a flood
			op := i % 3
			if off[op] {
				if len(off) == 3 {
					return
				}
				continue
			}
			id := 1 + (int64(i)*7919)%maxID
			var err error
			switch op {
			case 0:
				v := fmt.Sprintf("SSN-%s-u%d", f.tag, i)
				if _, err = conn.Exec(ctx, "UPDATE people SET ssn = $1 WHERE id = $2", v, id); err == nil {
					f.want.set(id, &v, nil)
				}
			case 1:
				v := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i%5000)
				s := v.Format("2006-01-02")
				if _, err = conn.Exec(ctx, "UPDATE people SET dob = $1 WHERE id = $2", v, id); err == nil {
					f.want.set(id, nil, &s)
				}
			case 2:
				v := fmt.Sprintf("SSN-%s-i%d", f.tag, i)
				err = conn.QueryRow(ctx, "INSERT INTO people (name, ssn, note) VALUES ('new', $1, 'NOTE-"+f.tag+"') RETURNING id", v).Scan(&next)
				if err == nil {
					empty := ""
					f.want.set(next, &v, &empty)
				}
			}
			if err != nil {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) {
					w.errs = append(w.errs, err)
					return
				}
				off[op] = true
				w.refused = append(w.refused, fmt.Sprintf("op %d: %v", op, err))
				continue
			}
			w.writes++
		}
	}()
	return w
}

// finish stops the writer and fails the test on a connection error.
func (w *writer) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	if len(w.errs) > 0 {
		t.Fatalf("writer: %v", w.errs)
	}
}

// reload rewrites p's config with extra appended and sends SIGHUP; it
// waits for the reload to succeed.
func reload(t *testing.T, p *proxy, extra string) {
	t.Helper()
	cfg, err := os.ReadFile(p.config)
	if err != nil {
		t.Fatal(err)
	}
	if extra != "" {
		if err := os.WriteFile(p.config, append(cfg, []byte(extra)...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	before := strings.Count(p.out.String(), "config reloaded")
	failed := strings.Count(p.out.String(), "config reload failed")
	p.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 20*time.Second, func() string {
		out := p.out.String()
		if strings.Count(out, "config reload failed") > failed {
			t.Fatalf("reload failed:\n%s", out)
		}
		if strings.Count(out, "config reloaded") > before {
			return ""
		}
		return "no reload:\n" + out
	})
}

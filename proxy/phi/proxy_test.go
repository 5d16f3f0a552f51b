package phi

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

func TestStartupChecksTheSchema(t *testing.T) {
	ctx := testCtx(t)
	doc, err := os.ReadFile(testCfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	// name is text in the database, and nothing is called nosuch.
	bad := string(doc) + "  public.blobs:\n    t: {type: text, mode: randomized, default: plaintext}\n    nosuch: {type: text, mode: randomized, default: plaintext}\n"
	path := filepath.Join(filepath.Dir(testCfg.Path), "bad.yaml")
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "public.blobs.t") || !strings.Contains(err.Error(), "must be bytea") ||
		!strings.Contains(err.Error(), "public.blobs.nosuch") || !strings.Contains(err.Error(), "bad.yaml:") {
		t.Fatalf("New with a bad schema: %v", err)
	}
	// A config without PHI is pure pass-through: no interceptor at all.
	plain, err := config.Parse([]byte("listen: 127.0.0.1:0\nupstream: {address: 127.0.0.1:1, sslmode: disable}\ncatalog_dsn: postgres://x@127.0.0.1:1/db\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(ctx, plain)
	if err != nil {
		t.Fatal(err)
	}
	if p.Factory() != nil {
		t.Fatal("Factory is not nil without PHI columns")
	}
}

func TestReloadAndDDL(t *testing.T) {
	ctx := testCtx(t)
	// Left by an earlier run (-count > 1); dropped before the proxy takes
	// its catalog snapshot.
	mustExec(t, ctx, connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol), "DROP TABLE IF EXISTS ddl_probe")
	p := startProxy(t)
	conn := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES (90001, $1)", "909-09-0909")
	if err := p.phi.Reload(ctx, testCfg); err != nil {
		t.Fatal(err)
	}
	v := p.phi.cur.Load().cat.Version
	// DDL through the proxy refreshes the catalog in the background.
	mustExec(t, ctx, conn, "CREATE TABLE ddl_probe (id int)")
	for i := 0; i < 100 && p.phi.cur.Load().cat.Version == v; i++ {
		mustExec(t, ctx, conn, "SELECT pg_sleep(0.01)")
	}
	if p.phi.cur.Load().cat.Version == v {
		t.Fatal("the catalog was not refreshed after DDL")
	}
	var ssn string
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 90001").Scan(&ssn); err != nil || ssn != "909-09-0909" {
		t.Fatalf("after reload: %v", err)
	}
	// COPY in binary format on a PHI relation streams (copy_binary_test.go);
	// a stream that is not PGCOPY is refused (22P04).
	var buf bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &buf, "COPY patients TO STDOUT WITH (FORMAT binary)"); err != nil || !bytes.HasPrefix(buf.Bytes(), []byte("PGCOPY\n")) {
		t.Fatalf("binary COPY TO on a PHI relation: %v", err)
	}
	_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tx\n"), "COPY patients (id, ssn) FROM STDIN (FORMAT binary)")
	expectCode(t, err, "22P04", "binary COPY FROM of text on a PHI relation")
	if _, err := conn.PgConn().CopyTo(ctx, &buf, "COPY ddl_probe TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	stillWorks(t, ctx, conn)
}

// Issue 18, item 14: the KEK or a keyset unavailable at start or on
// reload. At start the PHI layer does not come up (a clear error naming
// the keys; nothing is served unencrypted); a reload that cannot read
// them fails and the previous keys stay in use.
func TestKeysUnavailableAtStartAndReload(t *testing.T) {
	ctx, p := start(t)
	conn := p.via(pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7801, "keys-fault")

	noKEK := *testCfg
	noKEK.Keys.KEK = "file:" + filepath.Join(t.TempDir(), "missing-kek.json")
	noKeysets := *testCfg
	noKeysets.Keys.Dir = t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  *config.Config
	}{
		{"KEK file gone", &noKEK},
		{"keyset directory empty", &noKeysets},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), "keys") {
				t.Fatalf("start: %v, want an error naming the keys", err)
			}
			if err := p.phi.Reload(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), "keys") {
				t.Fatalf("reload: %v, want an error naming the keys", err)
			}
			// The previous keys stay: reads and writes go on.
			var ssn string
			if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = $1", 7801).Scan(&ssn); err != nil || ssn != "keys-fault" {
				t.Fatalf("after the failed reload: %q, %v", ssn, err)
			}
			stillWorks(t, ctx, connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol))
		})
	}
}

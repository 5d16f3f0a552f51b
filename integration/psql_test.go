package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPsqlResultsEqualDirect runs the same psql invocations direct and
// through the proxy and requires identical output.
func TestPsqlResultsEqualDirect(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	e := fixture
	direct := appDSN(e.cluster.Addr(), "clinic", "sslmode=require")
	through := appDSN(p.addr(), "clinic", "sslmode=require")

	// Each table name is per target so both runs start from the same state.
	cases := []struct {
		name string
		args func(tbl string) []string
	}{
		{"a single query with -c", func(string) []string {
			return []string{"-c", "SELECT g, g * 2 AS twice, 'row ' || g AS label FROM generate_series(1, 5) g"}
		}},
		{"a multi-statement string in one simple Query", func(tbl string) []string {
			return []string{"-c", "CREATE TABLE " + tbl + "(a int, b text); INSERT INTO " + tbl + " VALUES (1, 'x'), (2, NULL); SELECT * FROM " + tbl + " ORDER BY a; DROP TABLE " + tbl}
		}},
		{"an error inside a multi-statement string", func(tbl string) []string {
			return []string{"-c", "SELECT 1; SELECT * FROM no_such_table_" + tbl + "; SELECT 2"}
		}},
		{"notices and parameter status", func(string) []string {
			return []string{"-c", "SET application_name = 'it'; DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$; SHOW application_name"}
		}},
		{"a prepared statement at SQL level", func(string) []string {
			return []string{"-c", "PREPARE q(int) AS SELECT $1 + 1; EXECUTE q(41); DEALLOCATE q"}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want, werr := psql(t, direct, tc.args("t_direct_"+string(rune('a'+i)))...)
			got, gerr := psql(t, through, tc.args("t_proxy_"+string(rune('a'+i)))...)
			want = strings.ReplaceAll(want, "t_direct_", "t_X_")
			got = strings.ReplaceAll(got, "t_proxy_", "t_X_")
			if (werr == nil) != (gerr == nil) || got != want {
				t.Fatalf("through the proxy:\n%s(err %v)\ndirect:\n%s(err %v)", got, gerr, want, werr)
			}
		})
	}
}

func TestPsqlCopyRoundTrip(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	e := fixture
	dir := t.TempDir()
	in := filepath.Join(dir, "in.csv")
	var b strings.Builder
	for i := 0; i < 5000; i++ {
		b.WriteString(strings.Repeat("x", i%17) + "," + string(rune('a'+i%26)) + "\n")
	}
	if err := os.WriteFile(in, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	// The same \copy in and out, direct and through the proxy; both
	// outputs must be byte-identical and hold every row.
	roundTrip := func(hostport, tbl string) []byte {
		out := filepath.Join(dir, tbl+".csv")
		if o, err := psql(t, appDSN(hostport, "clinic", "sslmode=require"), "-c", "CREATE TABLE "+tbl+"(n serial, a text, b text)",
			"-c", `\copy `+tbl+`(a, b) FROM '`+in+`' WITH (FORMAT csv)`,
			"-c", `\copy (SELECT a, b FROM `+tbl+` ORDER BY n) TO '`+out+`' WITH (FORMAT csv)`,
			"-c", "DROP TABLE "+tbl); err != nil {
			t.Fatalf("%v\n%s", err, o)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	got := roundTrip(p.addr(), "copy_proxy")
	want := roundTrip(e.cluster.Addr(), "copy_direct")
	if string(got) != string(want) {
		t.Fatalf("COPY through the proxy differs from direct: %d vs %d bytes", len(got), len(want))
	}
	if n := strings.Count(string(got), "\n"); n != 5000 {
		t.Fatalf("COPY returned %d rows, want 5000", n)
	}
}

func TestPsqlVerifyFullAgainstProxyCertificate(t *testing.T) {
	p := startProxy(t, proxyOpts{clientTLS: "require"})
	e := fixture
	ok := "host=localhost port=" + portOf(p.addr()) + " user=app password=app-pw dbname=clinic sslmode=verify-full sslrootcert=" + e.cluster.CA.CertFile
	out, err := psql(t, ok, "-Atc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.TrimSpace(out) != "t" {
		t.Fatalf("upstream leg is not TLS: %q", out)
	}
	// A host name the proxy certificate does not carry must fail verification.
	bad := "host=127.0.0.2 port=" + portOf(p.addr()) + " user=app password=app-pw dbname=clinic sslmode=verify-full sslrootcert=" + e.cluster.CA.CertFile
	if out, err := psql(t, bad, "-c", "SELECT 1"); err == nil {
		t.Fatalf("verify-full accepted a certificate without the host name:\n%s", out)
	}
	// client_tls: require refuses a plaintext startup with 28000.
	plain := "host=127.0.0.1 port=" + portOf(p.addr()) + " user=app password=app-pw dbname=clinic sslmode=disable"
	out, err = psql(t, plain, "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "FATAL") || !strings.Contains(strings.ToLower(out), "ssl") {
		t.Fatalf("plaintext startup not refused clearly:\n%s", out)
	}
}

var failedRe = regexp.MustCompile(`(?s)failed: (.*)`)

// connOutcome reduces psql's output for a connection attempt to what the
// server said, so direct and proxied attempts can be compared.
func connOutcome(out string, err error) string {
	if err == nil {
		return "ok: " + strings.TrimSpace(out)
	}
	if m := failedRe.FindStringSubmatch(out); m != nil {
		return "error: " + strings.TrimSpace(m[1])
	}
	return "error: " + strings.TrimSpace(out)
}

func portOf(addr string) string {
	_, port, _ := strings.Cut(addr, ":")
	return port
}

// TestAuthMatrixPsql: client TLS on/off × upstream TLS on/off ×
// channel_binding disable/prefer/require, and the failure cases, each
// compared with the same attempt made directly against PostgreSQL.
func TestAuthMatrixPsql(t *testing.T) {
	e := fixture
	for _, upstream := range []string{"verify-full", "disable"} {
		p := startProxy(t, proxyOpts{clientTLS: "allow", upstreamSSL: upstream})
		for _, clientSSL := range []string{"require", "disable"} {
			for _, cb := range []string{"disable", "prefer", "require"} {
				name := "upstream " + upstream + ", client sslmode " + clientSSL + ", channel_binding " + cb
				t.Run(name, func(t *testing.T) {
					q := "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
					conn := func(hp string) string {
						return "host=127.0.0.1 port=" + portOf(hp) + " user=app password=app-pw dbname=clinic sslmode=" + clientSSL + " channel_binding=" + cb
					}
					got := connOutcome(psql(t, conn(p.addr()), "-Atc", "SELECT current_user"))
					want := connOutcome(psql(t, conn(e.cluster.Addr()), "-Atc", "SELECT current_user"))
					if got != want {
						t.Fatalf("through the proxy: %s\ndirect: %s", got, want)
					}
					if strings.HasPrefix(got, "ok") {
						out, err := psql(t, conn(p.addr()), "-Atc", q)
						if err != nil {
							t.Fatal(out)
						}
						wantSSL := "t"
						if upstream == "disable" {
							wantSSL = "f"
						}
						if strings.TrimSpace(out) != "app|"+wantSSL {
							t.Fatalf("session = %q, want app|%s", out, wantSSL)
						}
					}
				})
			}
		}
	}

	p := startProxy(t, proxyOpts{})
	failures := []struct{ name, user, password string }{
		{"wrong password", "app", "nope"},
		{"unknown role gets the same message as a wrong password", "ghost", "nope"},
		{"NOLOGIN role", "nologin_user", "nl-pw"},
		{"expired VALID UNTIL", "expired_user", "ex-pw"},
		{"md5 role with the right password", "md5user", "md5-pw"},
		{"md5 role with a wrong password", "md5user", "bad"},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			conn := func(hp string) string {
				return "host=127.0.0.1 port=" + portOf(hp) + " user=" + f.user + " password=" + f.password + " dbname=postgres sslmode=require"
			}
			got := connOutcome(psql(t, conn(p.addr()), "-Atc", "SELECT current_user"))
			want := connOutcome(psql(t, conn(e.cluster.Addr()), "-Atc", "SELECT current_user"))
			if got != want {
				t.Fatalf("through the proxy: %s\ndirect: %s", got, want)
			}
		})
	}
}

// TestPgbench initialises and runs pgbench through the proxy in each query
// mode and checks the data it wrote directly.
func TestPgbench(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	e := fixture
	bin := filepath.Join(e.cluster.BinDir, "pgbench")
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(args, "-h", "127.0.0.1", "-p", portOf(p.addr()), "-U", "app", "clinic")...)
		cmd.Env = append(os.Environ(), "PGPASSWORD=app-pw", "PGSSLMODE=require")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("-i", "-q", "-s", "1")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run("-M "+mode, func(t *testing.T) {
			out := run("-n", "-M", mode, "-c", "4", "-j", "2", "-t", "200")
			if !strings.Contains(out, "number of transactions actually processed: 800/800") {
				t.Fatalf("pgbench did not complete every transaction:\n%s", out)
			}
		})
	}
	var n string
	out, err := psql(t, appDSN(e.cluster.Addr(), "clinic"), "-Atc", "SELECT count(*) FROM pgbench_accounts; SELECT count(*) FROM pgbench_history")
	if err != nil {
		t.Fatal(out)
	}
	n = strings.Join(strings.Fields(out), ",")
	if n != "100000,2400" {
		t.Fatalf("direct counts after pgbench through the proxy = %s, want 100000,2400", n)
	}
}

package admin

import (
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// canary is a PHI value that must never show in a metric.
const canary = "CANARY-987-65-4321"

// metricsProxy runs phiproxy with metrics, wired as serve wires them, in
// front of the package's cluster; it returns the proxy's address and the
// admin API's base URL.
func metricsProxy(t *testing.T) (addr, base string) {
	t.Helper()
	e := phiCluster(t)
	ctx := testenv.Context(t, 30*time.Second)
	log := slog.New(slog.NewJSONHandler(&testenv.Buffer{}, nil))
	var px *phi.Proxy
	m := NewMetrics(func() phi.Status { return px.Status() })
	px, err := phi.New(ctx, e.cfg, phi.WithLogger(log), phi.WithObserver(m))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(e.cfg, proxy.WithLogger(log), proxy.WithInterceptor(px.Factory()), proxy.WithSessionHook(m.SessionHook))
	if err != nil {
		t.Fatal(err)
	}
	addr = testenv.Serve(t, srv, func(error) { px.Close() })
	_, base = startAdmin(t, m, Readiness{Upstream: e.cluster.Addr(), Status: px.Status, CatalogMaxAge: time.Minute})
	if c := testenv.Connect(t, ctx, testenv.AppDSN(addr), nil); true {
		if _, err := c.Exec(ctx, "TRUNCATE patients"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	return addr, base
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	code, body := testenv.HTTPGet(t, nil, base+"/metrics", "Bearer "+testToken)
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return body
}

// series are the phiproxy_ sample lines of a scrape.
func series(body string) []string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "phiproxy_") {
			out = append(out, l)
		}
	}
	return out
}

func TestMetricsAfterACanaryWorkload(t *testing.T) {
	addr, base := metricsProxy(t)
	ctx := testenv.Context(t, 30*time.Second)
	c := testenv.Connect(t, ctx, testenv.AppDSN(addr), nil)
	stmts := []string{
		"INSERT INTO patients VALUES (1, 'Ann', '" + canary + "')",
		"SELECT ssn FROM patients WHERE ssn = '" + canary + "'",
		"UPDATE patients SET ssn = '" + canary + "' WHERE id = 1",
		"DELETE FROM patients WHERE ssn = '" + canary + "x'",
	}
	for _, s := range stmts {
		if _, err := c.Exec(ctx, s, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	// Extended protocol, the canary as a parameter.
	var got string
	if err := c.QueryRow(ctx, "SELECT ssn FROM patients WHERE ssn = $1", canary).Scan(&got); err != nil || got != canary {
		t.Fatalf("read back %q, %v", got, err)
	}
	// A refusal: a function over a PHI column.
	_, err := c.Exec(ctx, "SELECT lower(ssn) FROM patients WHERE ssn = '"+canary+"'", pgx.QueryExecModeSimpleProtocol)
	var pe *pgconn.PgError
	if !asPgError(err, &pe) {
		t.Fatalf("lower(ssn) was not refused: %v", err)
	}
	c.Close(ctx)

	// The session's end is counted once the proxy has seen the client go.
	body := scrape(t, base)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(body, `phiproxy_sessions_active{tls="false"} 0`) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		body = scrape(t, base)
	}
	for _, want := range []string{
		`phiproxy_sessions_total{tls="false"} 2`, // TRUNCATE's session and this one
		`phiproxy_sessions_active{tls="false"} 0`,
		`phiproxy_statements_total{action="write",outcome="ok"} 2`,
		`phiproxy_statements_total{action="read",outcome="ok"} 2`,
		`phiproxy_statements_total{action="delete",outcome="ok"} 2`, // and the TRUNCATE
		// The planner's refusal: the action its first keyword says.
		`phiproxy_statements_total{action="read",outcome="refused"} 1`,
		`phiproxy_refusals_total{sqlstate="` + pe.Code + `"} 1`,
		`phiproxy_keys_loaded 1`,
		`phiproxy_lockdown 0`,
		`phiproxy_decisions_total{decision="allowed"} `,
		`phiproxy_decisions_total{decision="denied"} 1`,
		`phiproxy_plan_seconds_count `,
		`phiproxy_crypto_seconds_count{op="encrypt"} `,
		`phiproxy_crypto_seconds_count{op="decrypt"} `,
		`phiproxy_plan_cache_lookups_total{result="miss",tier="text"}`,
		`phiproxy_catalog_version `,
		`phiproxy_catalog_age_seconds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %q in the scrape", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", strings.Join(series(body), "\n"))
	}
	// No value, no SQL text, no role or user name.
	lower := strings.ToLower(body)
	for _, bad := range []string{strings.ToLower(canary), "987-65", "select ", "insert ", "update ", "delete from", "patients", "lower(", `"` + testenv.AppUser + `"`, testenv.AppDB} {
		if strings.Contains(lower, bad) {
			t.Errorf("the scrape holds %q", bad)
		}
	}
	// Every label value is from a fixed vocabulary.
	label := regexp.MustCompile(`([a-z_]+)="([^"]*)"`)
	vocab := regexp.MustCompile(`^([a-z_]+|[0-9A-Z]{5})$`)
	bucket := regexp.MustCompile(`^([0-9.e+-]+|\+Inf)$`) // a histogram's fixed bucket bounds
	for _, s := range series(body) {
		for _, m := range label.FindAllStringSubmatch(s, -1) {
			if !vocab.MatchString(m[2]) && !(m[1] == "le" && bucket.MatchString(m[2])) {
				t.Errorf("label value %q outside the vocabulary in %s", m[2], s)
			}
		}
	}
}

func asPgError(err error, pe **pgconn.PgError) bool {
	p, ok := err.(*pgconn.PgError)
	if ok {
		*pe = p
	}
	return ok
}

// 1000 distinct statements of every kind — reads, writes, refusals,
// server errors, pass-through — add no series once each kind was seen.
func TestMetricsCardinalityIsBounded(t *testing.T) {
	addr, base := metricsProxy(t)
	ctx := testenv.Context(t, 60*time.Second)
	c := testenv.Connect(t, ctx, testenv.AppDSN(addr, "application_name=card"), nil)
	run := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			var s string
			switch i % 5 {
			case 0:
				s = fmt.Sprintf("INSERT INTO patients VALUES (%d, 'n%d', 'ssn-%d')", i, i, i)
			case 1:
				s = fmt.Sprintf("SELECT ssn, name AS n%d FROM patients WHERE id = %d", i, i-1)
			case 2:
				s = fmt.Sprintf("SELECT upper(ssn) AS u%d FROM patients", i) // refused
			case 3:
				s = fmt.Sprintf("SELECT ssn FROM patients WHERE id = %d/0", i) // the server's 22012
			case 4:
				s = fmt.Sprintf("SELECT %d AS plain%d", i, i) // pass-through
			}
			_, err := c.Exec(ctx, s, pgx.QueryExecModeSimpleProtocol)
			if (err == nil) != (i%5 != 2 && i%5 != 3) {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	run(0, 10)
	before := series(scrape(t, base))
	run(10, 1010)
	after := series(scrape(t, base))
	if len(after) != len(before) {
		t.Errorf("%d series after 10 statements, %d after 1000 more distinct ones", len(before), len(after))
	}
	body := strings.Join(after, "\n")
	for _, want := range []string{`phiproxy_statements_total{action="write",outcome="ok"} 202`, `phiproxy_statements_total{action="read",outcome="error"} 202`} {
		if !strings.Contains(body, want) {
			t.Errorf("no %q in:\n%s", want, body)
		}
	}
}

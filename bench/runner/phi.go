package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// The PHI workload runs bench/phi.sql on three paths in one run:
//
//	direct    PostgreSQL, plaintext twin (database bench_plain)
//	pass      phiproxy without phi:, plaintext twin: the cost of the hop
//	phi       phiproxy with phi:, encrypted table (database bench_phi)
//
// phi/pass is the cost of encryption and rewriting on top of the hop
// (issue 6's target: >= 0.8); phi/direct is the whole cost. A fourth path
// separates PostgreSQL's share of that cost from the proxy's:
//
//	cipher    PostgreSQL directly on the encrypted table, running
//	          bench/phi_ciphertext.sql (the same statements with
//	          envelope-shaped values)

const (
	plainDB = "bench_plain"
	phiDB   = "bench_phi"
)

// phiPolicyColumns is phiColumns with a two-rule read policy the bench
// role matches at its second rule (-audit …,policy): the cost of
// deciding per statement.
const phiPolicyColumns = `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic, default: deny, read: [{roles: [pg_monitor], access: mask:last4}, {roles: [bench], access: plaintext}]}
    diagnosis: {type: text, mode: randomized, default: deny, read: [{roles: [pg_monitor], access: mask:redact}, {roles: [bench], access: plaintext}]}
`

// phiColumns is the phi: section for bench_phi's patients table.
const phiColumns = `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic, default: plaintext}
    diagnosis: {type: text, mode: randomized, default: plaintext}
`

// setupPHIDatabases creates bench_plain (with rows patients) and bench_phi
// (empty: its rows are loaded through phiproxy), both owned by the bench
// role, which must exist.
func setupPHIDatabases(ctx context.Context, c *pgcluster.Cluster, rows int) error {
	for _, db := range []string{plainDB, phiDB} {
		if err := c.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, benchUser)); err != nil {
			return err
		}
	}
	if err := execAsBench(ctx, c, plainDB,
		"CREATE TABLE patients (id serial PRIMARY KEY, ssn text, diagnosis text)",
		fmt.Sprintf("INSERT INTO patients (id, ssn, diagnosis) SELECT g, (100000000 + g)::text, 'diagnosis ' || g FROM generate_series(1, %d) g", rows),
		fmt.Sprintf("SELECT setval('patients_id_seq', %d)", rows),
		"CREATE INDEX ON patients (ssn)",
		"VACUUM ANALYZE patients"); err != nil {
		return err
	}
	stmts := []string{"CREATE TABLE patients (id serial PRIMARY KEY, ssn bytea, diagnosis bytea)", "CREATE INDEX ON patients (ssn)"}
	return execAsBench(ctx, c, phiDB, append(stmts, envelopeChecks("patients")...)...)
}

// envelopeChecks are the envelope CHECK constraints of table's two PHI
// columns, ssn and diagnosis (in schema public).
func envelopeChecks(table string) []string {
	var stmts []string
	for _, col := range []string{"ssn", "diagnosis"} {
		stmts = append(stmts, crypto.EnvelopeCheckSQL(config.Column{Schema: "public", Table: table, Name: col}))
	}
	return stmts
}

// proxyEndpoint returns what a proxy in front of c needs: the PGPASSFILE
// with c's superuser password (for its catalog connection) and a free
// port to listen on.
func proxyEndpoint(c *pgcluster.Cluster) (pgpass string, port int, err error) {
	if pgpass, err = c.WritePgpass(); err != nil {
		return "", 0, err
	}
	port, err = pgcluster.FreePort()
	return pgpass, port, err
}

// execAsBench runs stmts in db as the bench role.
func execAsBench(ctx context.Context, c *pgcluster.Cluster, db string, stmts ...string) error {
	conn, err := pgx.Connect(ctx, c.DSN(c.SuperUser, c.SuperPassword, db, "sslmode=disable"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range append([]string{"SET ROLE " + benchUser}, stmts...) {
		if _, err := conn.Exec(ctx, s, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s: %s: %w", db, s, err)
		}
	}
	return nil
}

// writeProxyConfig writes dir/phiproxy.yaml for a proxy on port in front of
// c, with the catalog in db; with phi it adds the phi: section and creates
// its keys (a file KEK in dir).
func writeProxyConfig(ctx context.Context, dir string, port int, c *pgcluster.Cluster, db string, phi string, opts ...string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	text := fmt.Sprintf(`listen: 127.0.0.1:%d
upstream: {address: %s, sslmode: disable}
catalog_dsn: postgres://%s@%s/%s?sslmode=disable
keys: {dir: keys, kek: "file:kek.json"}
`, port, c.Addr(), c.SuperUser, c.Addr(), db)
	text += phi
	// opts are extra top-level YAML lines (audit:, admin:).
	for _, o := range opts {
		text += o + "\n"
	}
	path := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return "", err
	}
	if phi == "" {
		return path, nil
	}
	cfg, err := config.Load(path)
	if err != nil {
		return "", err
	}
	if err := crypto.InitKeys(ctx, cfg, crypto.Options{}); err != nil {
		return "", err
	}
	return path, nil
}

// loadPHIRows inserts the same rows bench_plain holds, through the proxy
// at dsn, so that they are encrypted.
func loadPHIRows(ctx context.Context, dsn string, rows int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for lo := 1; lo <= rows; lo += 1000 {
		b := &pgx.Batch{}
		for id := lo; id < lo+1000 && id <= rows; id++ {
			b.Queue("INSERT INTO patients (id, ssn, diagnosis) VALUES ($1, $2, $3)", id, strconv.Itoa(100000000+id), "diagnosis "+strconv.Itoa(id))
		}
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, "SELECT setval('patients_id_seq', $1)", rows); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "VACUUM ANALYZE patients")
	return err
}

func runPHI(ctx context.Context, phiproxyBin, script string, dur time.Duration, rows, repeat int, modes, clients, auditModes []string, pgDurable bool) error {
	c, work, stop, err := startBenchCluster(ctx, pgDurable)
	if err != nil {
		return err
	}
	defer stop()
	if err := setupPHIDatabases(ctx, c, rows); err != nil {
		return err
	}

	targets := []target{{name: "direct", port: c.Port, db: plainDB}}
	proxies := []target{{name: "pass", db: plainDB}}
	for _, a := range auditModes {
		proxies = append(proxies, target{name: auditTarget(a), db: phiDB})
	}
	firstPHI := ""
	for _, t := range proxies {
		pgpass, port, err := proxyEndpoint(c)
		if err != nil {
			return err
		}
		var extra []string
		if t.db == phiDB && firstPHI != "" {
			// The same keys as the first phi target: they share bench_phi.
			if err := copyKeys(firstPHI, filepath.Join(work, t.name)); err != nil {
				return err
			}
		}
		if t.db == phiDB && firstPHI == "" {
			firstPHI = filepath.Join(work, t.name)
		}
		section := ""
		if t.db == phiDB {
			mode := strings.TrimPrefix(strings.TrimPrefix(t.name, "phi"), "-")
			section = phiColumns
			if mode == "policy" {
				// The policy's cost: audit off, as phi-off, and two rules.
				mode, section = "off", phiPolicyColumns
			}
			if extra, t.admin, t.token, err = auditOptions(filepath.Join(work, t.name), mode); err != nil {
				return err
			}
		}
		cfg, err := writeProxyConfig(ctx, filepath.Join(work, t.name), port, c, t.db, section, extra...)
		if err != nil {
			return err
		}
		pid, stop, err := startProxyProcess(ctx, phiproxyBin, cfg, pgpass, port)
		if err != nil {
			return err
		}
		defer stop()
		t.port, t.pid = port, pid
		targets = append(targets, t)
	}
	fmt.Fprintf(os.Stderr, "loading %d rows through phiproxy…\n", rows)
	if err := loadPHIRows(ctx, fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", benchUser, benchPass, targets[2].port, phiDB), rows); err != nil {
		return fmt.Errorf("loading through phiproxy: %w", err)
	}
	if err := execAsBench(ctx, c, phiDB,
		"CREATE TABLE patients_ct (LIKE patients INCLUDING ALL)",
		"INSERT INTO patients_ct SELECT * FROM patients",
		"CREATE TABLE ssn_ct (n int PRIMARY KEY, ct bytea NOT NULL)",
		"INSERT INTO ssn_ct SELECT id, ssn FROM patients",
		"VACUUM ANALYZE patients_ct, ssn_ct"); err != nil {
		return err
	}
	targets = append(targets, target{name: "cipher", port: c.Port, db: phiDB})
	cipherScript := filepath.Join(filepath.Dir(script), "phi_ciphertext.sql")

	pgbench := filepath.Join(c.BinDir, "pgbench")
	env := append(os.Environ(), "PGPASSWORD="+benchPass, "PGSSLMODE=disable")
	cpu := cpuMeter{c.Pid()}
	runs, err := rounds(repeat, targets, modes, clients, func(t target, m, cl string) (result, error) {
		sc := script
		if t.name == "cipher" {
			sc = cipherScript
		}
		before := scrapeAudit(t)
		r, err := cpu.run(t, func() (result, error) {
			return runPgbench(ctx, pgbench, env, t.port, t.db, m, cl, dur, "-f", sc, "-D", "rows="+strconv.Itoa(rows))
		})
		after := scrapeAudit(t)
		r.auditEvents, r.auditBatches, r.auditFsync = after[0]-before[0], after[1]-before[1], after[2]-before[2]
		return r, err
	})
	if err != nil {
		return err
	}
	results := map[string]result{}
	for k, rs := range runs {
		results[k] = median(rs)
	}
	main := auditTarget(auditModes[0])
	if slices.Contains(auditModes, "strict") {
		main = "phi"
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintf(tw, "mode\tclients\tdirect TPS\tpass TPS\tphi TPS\tcipher TPS\tdirect ms\tpass ms\tphi ms\tphi/pass\tphi/direct\tproxy CPU µs/tx pass\tphi\tPostgreSQL CPU µs/tx direct\tcipher\tpass\tphi\t\n")
	for _, m := range modes {
		for _, cl := range clients {
			d, p, x, e := results[cellKey("direct", m, cl)], results[cellKey("pass", m, cl)], results[cellKey(main, m, cl)], results[cellKey("cipher", m, cl)]
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.3f\t%.3f\t%.3f\t%.2f\t%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t\n", m, cl, d.tps, p.tps, x.tps, e.tps, d.latencyMS, p.latencyMS, x.latencyMS, x.tps/p.tps, x.tps/d.tps,
				p.proxyUS, x.proxyUS, d.pgUS, e.pgUS, p.pgUS, x.pgUS)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return auditTable(results, auditModes, modes, clients)
}

// runPhiproxy runs `phiproxy ARGS --config cfg` and returns its output;
// the error holds the output too.
func runPhiproxy(ctx context.Context, bin, cfg, pgpass string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, append(args, "--config", cfg)...)
	cmd.Env = append(os.Environ(), "PGPASSFILE="+pgpass)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("phiproxy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// startProxyProcess runs `phiproxy serve --config cfg` until stop.
func startProxyProcess(ctx context.Context, bin, cfg, pgpass string, port int) (pid int, stop func(), err error) {
	px := exec.CommandContext(ctx, bin, "serve", "--config", cfg)
	px.Env = append(os.Environ(), "PGPASSFILE="+pgpass)
	logPath := filepath.Join(filepath.Dir(cfg), "phiproxy.log")
	log, err := os.Create(logPath)
	if err != nil {
		return 0, nil, err
	}
	px.Stdout, px.Stderr = log, log
	pid, stopProcess, err := startListening(ctx, "phiproxy", px, port, os.Interrupt, logPath)
	if err != nil {
		log.Close()
		return 0, nil, err
	}
	return pid, func() { stopProcess(); log.Close() }, nil
}

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/phiproxy/phiproxy/audit"
)

// The soak (-workload soak -clients 200 -duration 10m): many sessions
// mixing PHI reads, PHI writes and non-PHI statements through one
// phiproxy with the strict audit trail, for a long time. It samples the
// proxy's resident memory and goroutines every 30 s from its metrics, and
// at the end checks that pgbench saw no error, that the trail verifies,
// and that it holds exactly one event per PHI statement pgbench ran.

const soakScript = `\set id random(1, :rows)
\set nssn random(200000000, 299999999)
SELECT ssn, diagnosis FROM patients WHERE id = :id;
INSERT INTO patients (ssn, diagnosis) VALUES (:nssn::text, 'soak');
SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'patients';
`

var failedRe = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)

func runSoak(ctx context.Context, phiproxyBin string, dur time.Duration, rows int, clients string) error {
	n, err := strconv.Atoi(clients)
	if err != nil || n < 1 {
		return fmt.Errorf("-clients %q: one number for the soak", clients)
	}
	c, work, stop, err := startBenchCluster(ctx, false, fmt.Sprintf("max_connections = %d", n+20))
	if err != nil {
		return err
	}
	defer stop()
	if err := setupPHIDatabases(ctx, c, rows); err != nil {
		return err
	}
	pgpass, port, err := proxyEndpoint(c)
	if err != nil {
		return err
	}
	dir := filepath.Join(work, "soak")
	extra, admin, token, err := auditOptions(dir, "strict")
	if err != nil {
		return err
	}
	cfg, err := writeProxyConfig(ctx, dir, port, c, phiDB, phiColumns, extra...)
	if err != nil {
		return err
	}
	_, stopProxy, err := startProxyProcess(ctx, phiproxyBin, cfg, pgpass, port)
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			stopProxy()
		}
	}()
	fmt.Fprintf(os.Stderr, "loading %d rows through phiproxy…\n", rows)
	if err := loadPHIRows(ctx, fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", benchUser, benchPass, port, phiDB), rows); err != nil {
		return err
	}
	script := filepath.Join(work, "soak.sql")
	if err := os.WriteFile(script, []byte(soakScript), 0o644); err != nil {
		return err
	}
	t := target{name: "soak", port: port, db: phiDB, admin: admin, token: token}
	fmt.Printf("soak: %d sessions for %s\n\n", n, dur)
	fmt.Printf("| elapsed | resident MB | goroutines | sessions |\n|---:|---:|---:|---:|\n")
	sample := func(elapsed time.Duration) {
		m := scrapeMetrics(t, "process_resident_memory_bytes", "go_goroutines", `phiproxy_sessions_active{tls="false"}`)
		fmt.Printf("| %s | %.0f | %.0f | %.0f |\n", elapsed.Round(time.Second), m[0]/(1<<20), m[1], m[2])
	}
	sample(0)
	done := make(chan error, 1)
	var out []byte
	go func() {
		pgbench := filepath.Join(c.BinDir, "pgbench")
		cmd := exec.CommandContext(ctx, pgbench, "-n", "-M", "prepared", "-c", strconv.Itoa(n), "-j", "2", "-T", strconv.Itoa(int(dur.Seconds())),
			"-f", script, "-D", "rows="+strconv.Itoa(rows), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", benchUser, phiDB)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+benchPass, "PGSSLMODE=disable")
		var err error
		out, err = cmd.CombinedOutput()
		done <- err
	}()
	start := time.Now()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	var runErr error
wait:
	for {
		select {
		case runErr = <-done:
			break wait
		case <-tick.C:
			sample(time.Since(start))
		}
	}
	sample(time.Since(start))
	if runErr != nil {
		return fmt.Errorf("pgbench: %v\n%s", runErr, out)
	}
	txns, failed := int64(-1), int64(-1)
	if m := txnRe.FindSubmatch(out); m != nil {
		txns, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := failedRe.FindSubmatch(out); m != nil {
		failed, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	stopProxy()
	stopped = true
	vout, verr := runPhiproxy(ctx, phiproxyBin, cfg, pgpass, "audit", "verify")
	reads, writes, err := countSoakEvents(filepath.Join(dir, "audit"))
	if err != nil {
		return err
	}
	fmt.Printf("\ntransactions %d, failed %d; audit events: %d reads, %d writes (want %d each); verify: %s\n",
		txns, failed, reads, writes, txns, strings.TrimSpace(firstLine(vout)))
	switch {
	case verr != nil:
		return verr
	case failed != 0:
		return fmt.Errorf("%d failed transactions", failed)
	case reads != txns || writes != txns:
		return fmt.Errorf("the trail holds %d reads and %d writes for %d transactions", reads, writes, txns)
	}
	return nil
}

// countSoakEvents counts the soak's statement events in the trail (the
// load's inserts have another normalized text).
func countSoakEvents(dir string) (reads, writes int64, err error) {
	segs, err := audit.Segments(dir)
	if err != nil {
		return 0, 0, err
	}
	r := audit.NewReader(segs)
	defer r.Close()
	for r.Next() {
		ev, err := audit.Parse(r.Line().Bytes)
		if err != nil {
			return 0, 0, err
		}
		switch {
		case ev.Action == audit.ActionRead && strings.HasPrefix(ev.Query, "SELECT ssn, diagnosis FROM patients WHERE id = $1"):
			reads++
		case ev.Action == audit.ActionWrite && strings.Contains(ev.Query, "$1::text"):
			writes++
		}
	}
	return reads, writes, r.Err()
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

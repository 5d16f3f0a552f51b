package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
)

// The encrypt workload (issue 16's benchmark), in one run:
//
//	encrypt   `phiproxy encrypt` of a plaintext table of -rows rows with
//	          two PHI columns (ssn deterministic, diagnosis randomized):
//	          rows/s per column and for the whole table
//	COPY      COPY FROM STDIN and COPY TO STDOUT (text format) of -copy-rows
//	          rows with the same two columns, direct into a plaintext table
//	          and through phiproxy into an encrypted one: MB/s of the COPY
//	          stream and the ratio
const encDB = "bench_enc"

const encPHIColumns = `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic, default: plaintext}
    diagnosis: {type: text, mode: randomized, default: plaintext}
  public.copy_phi:
    ssn:       {type: text, mode: deterministic, default: plaintext}
    diagnosis: {type: text, mode: randomized, default: plaintext}
`

func runEncrypt(ctx context.Context, phiproxyBin string, rows, copyRows, batch, repeat int) error {
	c, work, stop, err := startBenchCluster(ctx, false)
	if err != nil {
		return err
	}
	defer stop()
	if err := c.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", encDB, benchUser)); err != nil {
		return err
	}
	stmts := []string{
		"CREATE TABLE patients (id serial PRIMARY KEY, ssn text, diagnosis text)",
		fmt.Sprintf("INSERT INTO patients (id, ssn, diagnosis) SELECT g, (100000000 + g)::text, 'diagnosis ' || g FROM generate_series(1, %d) g", rows),
		"VACUUM ANALYZE patients",
		"CREATE TABLE copy_plain (id int PRIMARY KEY, ssn text, diagnosis text)",
		"CREATE TABLE copy_phi (id int PRIMARY KEY, ssn bytea, diagnosis bytea)",
		"CREATE TABLE copy_ct (id int PRIMARY KEY, ssn bytea, diagnosis bytea)",
	}
	stmts = append(stmts, envelopeChecks("copy_phi")...)
	stmts = append(stmts, envelopeChecks("copy_ct")...)
	fmt.Fprintf(os.Stderr, "loading %d plaintext rows…\n", rows)
	if err := execAsBench(ctx, c, encDB, stmts...); err != nil {
		return err
	}
	pgpass, port, err := proxyEndpoint(c)
	if err != nil {
		return err
	}
	cfg, err := writeProxyConfig(ctx, filepath.Join(work, "encrypt"), port, c, encDB, encPHIColumns, "audit: {mode: strict}")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "phiproxy encrypt of %d rows, two columns…\n", rows)
	start := time.Now()
	out, err := runPhiproxy(ctx, phiproxyBin, cfg, pgpass, "encrypt", "--column", "public.patients.ssn", "--column", "public.patients.diagnosis", "--batch-size", strconv.Itoa(batch))
	elapsed := time.Since(start)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintf(tw, "encrypt\trows\tbatch\tseconds\trows/s\t\n")
	for _, m := range regexp.MustCompile(`(public\.patients\.\w+): encrypted (\d+) values in (\S+) \((\d+) rows/s\)`).FindAllStringSubmatch(out, -1) {
		d, _ := time.ParseDuration(m[3])
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%s\t\n", m[1], m[2], batch, d.Seconds(), m[4])
	}
	fmt.Fprintf(tw, "whole table (both columns, process wall time)\t%d\t%d\t%.1f\t%.0f\t\n", rows, batch, elapsed.Seconds(), float64(rows)/elapsed.Seconds())
	if err := tw.Flush(); err != nil {
		return err
	}

	_, stopProxy, err := startProxyProcess(ctx, phiproxyBin, cfg, pgpass, port)
	if err != nil {
		return err
	}
	defer stopProxy()
	direct := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", benchUser, benchPass, c.Addr(), encDB)
	proxied := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", benchUser, benchPass, port, encDB)
	var data bytes.Buffer
	for i := 1; i <= copyRows; i++ {
		fmt.Fprintf(&data, "%d\t%d\tdiagnosis %d of a longer free-text note\n", i, 100000000+i, i)
	}
	mb := float64(data.Len()) / 1e6
	fmt.Fprintf(os.Stderr, "COPY of %d rows (%.1f MB of text), %d rounds…\n", copyRows, mb, repeat)
	// cipher: the ciphertext rows phiproxy wrote, copied directly into a
	// table like copy_phi: what PostgreSQL alone costs for the encrypted
	// table (rates on the plaintext stream's size, to compare).
	type cell struct{ in, out []float64 }
	cells := map[string]*cell{"direct": {}, "phiproxy": {}, "cipher": {}}
	var cipherData []byte
	for r := 0; r < repeat; r++ {
		for _, p := range []struct{ name, dsn, table string }{{"direct", direct, "copy_plain"}, {"phiproxy", proxied, "copy_phi"}, {"cipher", direct, "copy_ct"}} {
			d := data.Bytes()
			if p.name == "cipher" {
				if cipherData == nil {
					if cipherData, err = dumpTable(ctx, direct, "copy_phi"); err != nil {
						return err
					}
				}
				d = cipherData
			}
			in, out, err := copyRound(ctx, p.dsn, p.table, d)
			if err != nil {
				return fmt.Errorf("COPY %s: %w", p.name, err)
			}
			cells[p.name].in = append(cells[p.name].in, mb/in.Seconds())
			cells[p.name].out = append(cells[p.name].out, mb/out.Seconds())
		}
	}
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintf(tw, "COPY (text, %d rows, %.1f MB)\tdirect MB/s\tphiproxy MB/s\tphiproxy/direct\tciphertext direct MB/s\tphiproxy/ciphertext direct\t\n", copyRows, mb)
	d, p, c2 := cells["direct"], cells["phiproxy"], cells["cipher"]
	fmt.Fprintf(tw, "FROM STDIN\t%.1f\t%.1f\t%.2f\t%.1f\t%.2f\t\n", mid(d.in), mid(p.in), mid(p.in)/mid(d.in), mid(c2.in), mid(p.in)/mid(c2.in))
	fmt.Fprintf(tw, "TO STDOUT\t%.1f\t%.1f\t%.2f\t%.1f\t%.2f\t\n", mid(d.out), mid(p.out), mid(p.out)/mid(d.out), mid(c2.out), mid(p.out)/mid(c2.out))
	return tw.Flush()
}

// copyRound truncates table, copies data into it and back out through dsn,
// and returns the time of each.
func copyRound(ctx context.Context, dsn, table string, data []byte) (in, out time.Duration, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "TRUNCATE "+table); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if _, err := conn.PgConn().CopyFrom(ctx, bytes.NewReader(data), "COPY "+table+" (id, ssn, diagnosis) FROM STDIN"); err != nil {
		return 0, 0, err
	}
	in = time.Since(start)
	var n countWriter
	start = time.Now()
	if _, err := conn.PgConn().CopyTo(ctx, &n, "COPY "+table+" (id, ssn, diagnosis) TO STDOUT"); err != nil {
		return 0, 0, err
	}
	if int(n) != len(data) {
		return 0, 0, fmt.Errorf("COPY TO returned %d bytes, COPY FROM sent %d", n, len(data))
	}
	return in, time.Since(start), nil
}

// dumpTable returns COPY table TO STDOUT's text, read directly.
func dumpTable(ctx context.Context, dsn, table string) ([]byte, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	var b bytes.Buffer
	_, err = conn.PgConn().CopyTo(ctx, &b, "COPY "+table+" (id, ssn, diagnosis) TO STDOUT")
	return b.Bytes(), err
}

type countWriter int

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

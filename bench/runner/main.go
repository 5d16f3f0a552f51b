// Command runner measures pgbench through several paths in one run against
// the same throwaway cluster and prints TPS, latency and ratios. With
// -workload relay (the default): pgbench -S direct to PostgreSQL, through
// phiproxy, through PgBouncer in session mode. With -workload phi:
// bench/phi.sql direct on a plaintext schema, through phiproxy without PHI
// columns on it, and through phiproxy with PHI columns on the encrypted
// schema (see phi.go). It is a script, not a test: see bench/run.sh and
// docs/performance.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

const (
	benchUser = "bench"
	benchPass = "bench-password"
	benchDB   = "bench"
)

// target is one path pgbench measures: a port and the database on it.
type target struct {
	name string
	port int
	db   string
	pid  int // the proxy's process, 0 for direct
	// admin is the proxy's admin API (base URL and token file) for the
	// audit series of the phi targets; "" for none.
	admin, token string
}

type result struct {
	tps, latencyMS float64
	txns           int64 // transactions pgbench completed
	// CPU time (user + system) per transaction, in µs, of the proxy the
	// target goes through and of the PostgreSQL server (postmaster and
	// backends), measured around the pgbench run.
	proxyUS, pgUS float64
	// The audit trail's group commits during the run (phi targets with a
	// trail): events and batches written, seconds in fsync.
	auditEvents, auditBatches, auditFsync float64
}

func main() {
	phiproxy := flag.String("phiproxy", "bin/phiproxy", "phiproxy binary")
	duration := flag.Duration("duration", 10*time.Second, "seconds per pgbench run")
	scale := flag.Int("scale", 10, "pgbench -i scale factor")
	modes := flag.String("modes", "prepared,simple", "pgbench -M modes")
	clients := flag.String("clients", "1,8", "pgbench -c values")
	targetsFlag := flag.String("targets", "direct,phiproxy,pgbouncer", "paths to measure (relay workload); also floor-goroutine, floor-epoll, floor-epoll-raw: bare Go byte relays (floor.go, floor_raw.go)")
	repeat := flag.Int("repeat", 1, "interleaved rounds; the tables show per-cell medians")
	workload := flag.String("workload", "relay", "relay (pgbench -S), phi (bench/phi.sql on PHI columns) or encrypt (phiproxy encrypt rows/s, COPY MB/s)")
	rows := flag.Int("rows", 10000, "patients rows (phi and encrypt workloads)")
	copyRows := flag.Int("copy-rows", 200000, "rows per COPY (encrypt workload)")
	batch := flag.Int("batch-size", 1000, "phiproxy encrypt --batch-size (encrypt workload)")
	script := flag.String("script", "bench/phi.sql", "pgbench script (phi workload)")
	pgDurable := flag.Bool("pg-durable", false, "run PostgreSQL with fsync and synchronous_commit on (default off: the test clusters' setting)")
	auditModes := flag.String("audit", "strict", "audit modes of the phi target (phi workload): any of off,best_effort,strict; each is its own proxy")
	floor := flag.String("floor", "", "internal: run a floor relay (goroutine|epoll|epoll-raw) and nothing else")
	floorListen := flag.String("floor-listen", "", "internal: the floor relay's address")
	floorUpstream := flag.String("floor-upstream", "", "internal: the floor relay's upstream")
	flag.Parse()
	if *floor != "" {
		// serveFloor returns only when it fails.
		fmt.Fprintln(os.Stderr, "floor relay:", serveFloor(*floor, *floorListen, *floorUpstream))
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch *workload {
	case "relay":
		err = run(ctx, *phiproxy, *duration, *scale, *repeat, strings.Split(*modes, ","), strings.Split(*clients, ","), strings.Split(*targetsFlag, ","))
	case "phi":
		err = runPHI(ctx, *phiproxy, *script, *duration, *rows, *repeat, strings.Split(*modes, ","), strings.Split(*clients, ","), strings.Split(*auditModes, ","), *pgDurable)
	case "encrypt":
		err = runEncrypt(ctx, *phiproxy, *rows, *copyRows, *batch, *repeat)
	case "soak":
		err = runSoak(ctx, *phiproxy, *duration, *rows, strings.Split(*clients, ",")[0])
	default:
		err = fmt.Errorf("-workload %q is not relay, phi, encrypt or soak", *workload)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, phiproxyBin string, dur time.Duration, scale, repeat int, modes, clients, which []string) error {
	want := map[string]bool{}
	for _, w := range which {
		want[w] = true
	}
	c, work, stop, err := startBenchCluster(ctx, false)
	if err != nil {
		return err
	}
	defer stop()
	if err := c.Exec(ctx, fmt.Sprintf(`CREATE DATABASE %s OWNER %s`, benchDB, benchUser)); err != nil {
		return err
	}

	pgbench := filepath.Join(c.BinDir, "pgbench")
	env := append(os.Environ(), "PGPASSWORD="+benchPass, "PGSSLMODE=disable")
	initCmd := exec.CommandContext(ctx, pgbench, "-i", "-q", "-s", strconv.Itoa(scale), "-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", benchUser, benchDB)
	initCmd.Env = env
	if out, err := initCmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}

	targets := []target{{name: "direct", port: c.Port, db: benchDB}}

	if want["phiproxy"] {
		port, pid, stopProxy, err := startPhiproxy(ctx, work, phiproxyBin, c)
		if err != nil {
			return err
		}
		defer stopProxy()
		targets = append(targets, target{name: "phiproxy", port: port, db: benchDB, pid: pid})
	}

	if want["pgbouncer"] {
		bport, bpid, stopBouncer, err := startBouncer(ctx, work, c)
		if err != nil {
			return err
		}
		defer stopBouncer()
		targets = append(targets, target{name: "pgbouncer", port: bport, db: benchDB, pid: bpid})
	}
	for _, kind := range []string{"goroutine", "epoll", "epoll-raw"} {
		if !want["floor-"+kind] {
			continue
		}
		fport, fpid, stopFloor, err := startFloor(ctx, kind, c.Addr())
		if err != nil {
			return err
		}
		defer stopFloor()
		targets = append(targets, target{name: "floor-" + kind, port: fport, db: benchDB, pid: fpid})
	}
	return measure(ctx, pgbench, env, cpuMeter{c.Pid()}, targets, modes, clients, dur, repeat)
}

// startPhiproxy runs phiproxy serve with authentication terminated at the
// proxy (the default) and a plain upstream leg, like the other paths.
func startPhiproxy(ctx context.Context, work, phiproxyBin string, c *pgcluster.Cluster) (port, pid int, stop func(), err error) {
	pgpass, pxPort, err := proxyEndpoint(c)
	if err != nil {
		return 0, 0, nil, err
	}
	cfgPath := filepath.Join(work, "phiproxy.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`listen: 127.0.0.1:%d
upstream: {address: %s, sslmode: disable}
catalog_dsn: postgres://%s@%s/postgres?sslmode=disable
`, pxPort, c.Addr(), c.SuperUser, c.Addr())), 0o600)
	pid, stop, err = startProxyProcess(ctx, phiproxyBin, cfgPath, pgpass, pxPort)
	return pxPort, pid, stop, err
}

// measure runs every cell repeat times, rounds interleaved so that a
// slow period of the shared machine hits every target alike, and prints
// per-cell medians with the range of TPS over the rounds.
func measure(ctx context.Context, pgbench string, env []string, cpu cpuMeter, targets []target, modes, clients []string, dur time.Duration, repeat int) error {
	results, err := rounds(repeat, targets, modes, clients, func(t target, m, cl string) (result, error) {
		return cpu.run(t, func() (result, error) {
			return runPgbench(ctx, pgbench, env, t.port, t.db, m, cl, dur, "-S")
		})
	})
	if err != nil {
		return err
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintf(tw, "workload\tmode\tclients\ttarget\tTPS (median)\tTPS range\tlatency ms (median)\tratio to direct\tratio to PgBouncer\tproxy CPU µs/tx\tPostgreSQL CPU µs/tx\t\n")
	for _, m := range modes {
		for _, cl := range clients {
			d := median(results[cellKey("direct", m, cl)])
			bouncer := results[cellKey("pgbouncer", m, cl)]
			for _, t := range targets {
				rs := results[cellKey(t.name, m, cl)]
				r := median(rs)
				lo, hi := tpsRange(rs)
				toBouncer := "–" // PgBouncer not measured
				if len(bouncer) > 0 {
					toBouncer = fmt.Sprintf("%.2f", r.tps/median(bouncer).tps)
				}
				fmt.Fprintf(tw, "pgbench -S\t%s\t%s\t%s\t%.0f\t%.0f–%.0f\t%.3f\t%.2f\t%s\t%.1f\t%.1f\t\n", m, cl, t.name, r.tps, lo, hi, r.latencyMS, r.tps/d.tps, toBouncer, r.proxyUS, r.pgUS)
			}
		}
	}
	tw.Flush()
	return nil
}

// cellKey names one measured cell.
func cellKey(t, m, cl string) string { return t + "/" + m + "/" + cl }

// rounds runs every cell (mode × clients × target) repeat times, rounds
// interleaved so that a slow period of the shared machine hits every
// target alike, and returns each cell's results by cellKey.
func rounds(repeat int, targets []target, modes, clients []string, run func(t target, m, cl string) (result, error)) (map[string][]result, error) {
	if repeat < 1 {
		repeat = 1
	}
	out := map[string][]result{}
	for round := 1; round <= repeat; round++ {
		for _, m := range modes {
			for _, cl := range clients {
				for _, t := range targets {
					r, err := run(t, m, cl)
					if err != nil {
						return nil, fmt.Errorf("%s -M %s -c %s: %w", t.name, m, cl, err)
					}
					k := cellKey(t.name, m, cl)
					out[k] = append(out[k], r)
					fmt.Fprintf(os.Stderr, "round %d: %-10s -M %-8s -c %-2s tps=%.0f lat=%.3fms proxy=%.1fµs/tx postgres=%.1fµs/tx\n", round, t.name, m, cl, r.tps, r.latencyMS, r.proxyUS, r.pgUS)
				}
			}
		}
	}
	return out, nil
}

// median returns the per-field medians of rs.
func median(rs []result) result {
	field := func(f func(r result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return mid(v)
	}
	return result{
		tps:       field(func(r result) float64 { return r.tps }),
		latencyMS: field(func(r result) float64 { return r.latencyMS }),
		proxyUS:   field(func(r result) float64 { return r.proxyUS }),
		pgUS:      field(func(r result) float64 { return r.pgUS }),
		// Sums over the rounds: the ratios (events per batch, fsync per
		// batch) are of all of them.
		auditEvents:  sum(rs, func(r result) float64 { return r.auditEvents }),
		auditBatches: sum(rs, func(r result) float64 { return r.auditBatches }),
		auditFsync:   sum(rs, func(r result) float64 { return r.auditFsync }),
	}
}

func sum(rs []result, f func(result) float64) float64 {
	t := 0.0
	for _, r := range rs {
		t += f(r)
	}
	return t
}

func mid(v []float64) float64 {
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func tpsRange(rs []result) (lo, hi float64) {
	lo, hi = rs[0].tps, rs[0].tps
	for _, r := range rs[1:] {
		lo, hi = min(lo, r.tps), max(hi, r.tps)
	}
	return lo, hi
}

var (
	tpsRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	latRe = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	txnRe = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
)

// runPgbench runs pgbench with workload (e.g. -S, or -f SCRIPT) on db.
func runPgbench(ctx context.Context, pgbench string, env []string, port int, db, mode, clients string, dur time.Duration, workload ...string) (result, error) {
	jobs := clients
	if n, _ := strconv.Atoi(clients); n > 2 {
		jobs = "2"
	}
	args := append(append([]string{}, workload...), "-n", "-M", mode, "-c", clients, "-j", jobs,
		"-T", strconv.Itoa(int(dur.Seconds())), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", benchUser, db)
	cmd := exec.CommandContext(ctx, pgbench, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("%v\n%s", err, out)
	}
	tm := tpsRe.FindSubmatch(out)
	lm := latRe.FindSubmatch(out)
	if tm == nil || lm == nil {
		return result{}, fmt.Errorf("cannot read pgbench output:\n%s", out)
	}
	tps, _ := strconv.ParseFloat(string(tm[1]), 64)
	lat, _ := strconv.ParseFloat(string(lm[1]), 64)
	r := result{tps: tps, latencyMS: lat}
	if xm := txnRe.FindSubmatch(out); xm != nil {
		r.txns, _ = strconv.ParseInt(string(xm[1]), 10, 64)
	}
	return r, nil
}

// startListening starts cmd and waits until it listens on port; stop
// sends it sig and waits for it to exit. If it never listens it is
// stopped, and the error names it and holds its log (at logPath, if it
// keeps one).
func startListening(ctx context.Context, name string, cmd *exec.Cmd, port int, sig os.Signal, logPath string) (pid int, stop func(), err error) {
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	stop = func() { cmd.Process.Signal(sig); cmd.Wait() }
	if err := waitPort(ctx, port); err != nil {
		stop()
		var log []byte
		if logPath != "" {
			log, _ = os.ReadFile(logPath)
		}
		return 0, nil, fmt.Errorf("%s: %v\n%s", name, err, log)
	}
	return cmd.Process.Pid, stop, nil
}

func waitPort(ctx context.Context, port int) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("port %d not listening", port)
}

// startBouncer runs PgBouncer in session mode as the postgres user (it
// refuses to run as root).
func startBouncer(ctx context.Context, work string, c *pgcluster.Cluster) (port, pid int, stop func(), err error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/pgbouncer"); err2 == nil {
			bin = "/usr/sbin/pgbouncer"
		} else {
			return 0, 0, nil, fmt.Errorf("pgbouncer not installed (apt-get install pgbouncer): %w", err)
		}
	}
	port, _ = pgcluster.FreePort()
	dir := filepath.Join(work, "pgbouncer")
	os.Mkdir(dir, 0o755)
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
`, benchDB, c.Host, c.Port, benchDB, port, dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644)
	os.WriteFile(filepath.Join(dir, "userlist.txt"), []byte(fmt.Sprintf("%q %q\n", benchUser, benchPass)), 0o600)
	cmd := exec.CommandContext(ctx, bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return 0, 0, nil, err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, f := range []string{dir, filepath.Join(dir, "pgbouncer.ini"), filepath.Join(dir, "userlist.txt")} {
			os.Chown(f, uid, gid)
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	pid, stop, err = startListening(ctx, "pgbouncer", cmd, port, syscall.SIGINT, filepath.Join(dir, "pgbouncer.log"))
	return port, pid, stop, err
}

// startBenchCluster starts the benchmarks' cluster with the bench role
// and makes a work directory the cluster's processes can read; stop
// removes the directory and stops the cluster.
func startBenchCluster(ctx context.Context, pgDurable bool, extra ...string) (c *pgcluster.Cluster, work string, stop func(), err error) {
	conf := append([]string{"max_connections = 60"}, extra...)
	if pgDurable {
		// PostgreSQL as in production: every commit is flushed to disk.
		conf = append(conf, "fsync = on", "synchronous_commit = on", "full_page_writes = on")
	}
	c, err = pgcluster.Start(ctx, pgcluster.Options{NoTLS: true, Conf: conf})
	if err != nil {
		return nil, "", nil, err
	}
	if err := c.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, benchUser, benchPass)); err != nil {
		c.Stop()
		return nil, "", nil, err
	}
	work, err = os.MkdirTemp("", "phiproxy-bench-")
	if err != nil {
		c.Stop()
		return nil, "", nil, err
	}
	os.Chmod(work, 0o755)
	return c, work, func() { os.RemoveAll(work); c.Stop() }, nil
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// demoSchema is the sample clinic: PHI columns are bytea in PostgreSQL;
// demoPHI gives their logical types and modes.
const demoSchema = `
CREATE TABLE patients (
  id        serial PRIMARY KEY,
  name      text NOT NULL,
  ssn       bytea,   -- PHI text, deterministic: equality lookups and joins work
  diagnosis bytea,   -- PHI text, randomized
  dob       bytea,   -- PHI date, randomized
  mrn       bytea    -- PHI int8, deterministic
);
CREATE TABLE visits (
  id          serial PRIMARY KEY,
  patient_id  int NOT NULL REFERENCES patients(id),
  patient_ssn bytea, -- PHI text, deterministic, shares patients.ssn's key
  visited_at  timestamptz NOT NULL,
  notes       bytea  -- PHI text, randomized
);
`

const demoPHI = `phi:
  public.patients:
    ssn:       {type: text, mode: deterministic, default: plaintext}
    diagnosis: {type: text, mode: randomized, default: plaintext}
    dob:       {type: date, mode: randomized, default: plaintext}
    mrn:       {type: int8, mode: deterministic, default: plaintext}
  public.visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn, default: plaintext}
    notes:       {type: text, mode: randomized, default: plaintext}
`

// demoPatients is how many fake patients the demo loads through the proxy.
const demoPatients = 300

// runDemo starts a throwaway PostgreSQL 15 cluster with a sample clinic
// schema whose PHI columns are encrypted, keys under a temporary KEK, and
// phiproxy in front of it; it loads fake patients through the proxy, prints
// connection strings and queries to try, and runs until interrupted.
// Everything it creates lives in temporary directories removed on exit.
func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	port := fs.Int("port", 6432, "port phiproxy listens on (127.0.0.1)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("demo takes no arguments")
	}

	fmt.Fprintln(env.stdout, "phiproxy demo: starting a throwaway PostgreSQL 15 cluster…")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	const appUser, appPassword, db = "demo", "demo-password", "clinic"
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", appUser, appPassword)); err != nil {
		return err
	}
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, appUser)); err != nil {
		return err
	}

	work, err := os.MkdirTemp("", "phiproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	certFile, keyFile, err := cluster.CA.Issue("localhost", "127.0.0.1")
	if err != nil {
		return err
	}
	pgpass, err := cluster.WritePgpass()
	if err != nil {
		return err
	}
	// The catalog connection's password comes from PGPASSFILE, as the config
	// reference documents; the demo points it at its own file.
	os.Setenv("PGPASSFILE", pgpass)
	cfgPath := filepath.Join(work, "phiproxy.yaml")
	// keys, audit and state live beside the config, in the temporary
	// directory: the KEK is a throwaway file KEK.
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
client_tls: {mode: allow, cert: %s, key: %s}
upstream: {address: %s, sslmode: verify-full, sslrootcert: %s, server_name: localhost}
catalog_dsn: postgres://%s@localhost:%d/%s?sslmode=verify-full&sslrootcert=%s
keys: {dir: keys, kek: "file:kek.json"}
limits: {drain_timeout: 2s}
%s`, *port, certFile, keyFile, cluster.Addr(), cluster.CA.CertFile, cluster.SuperUser, cluster.Port, db, cluster.CA.CertFile, demoPHI)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := demoCreateSchema(ctx, cluster, cfgPath, db, appUser); err != nil {
		return err
	}
	// Keys with the same code as `phiproxy keys init`: a KEK file and one
	// keyset per key name.
	var keysOut bytes.Buffer
	if err := runKeys(ctx, &cmdEnv{stdout: &keysOut, stderr: &keysOut}, []string{"init", "--config", cfgPath}); err != nil {
		return fmt.Errorf("demo keys: %w\n%s", err, keysOut.Bytes())
	}

	// The proxy runs in this process; rows are loaded through it once it
	// listens, and it stops (draining) when ctx is cancelled.
	listen := fmt.Sprintf("127.0.0.1:%d", *port)
	sctx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	served := make(chan error, 1)
	go func() { served <- runServe(sctx, env, []string{"--config", cfgPath}) }()
	if err := demoWaitListening(ctx, listen, served); err != nil {
		return err
	}
	tls := "sslmode=verify-full&sslrootcert=" + cluster.CA.CertFile
	through := fmt.Sprintf("postgres://%s:%s@localhost:%d/%s?%s", appUser, appPassword, *port, db, tls)
	direct := fmt.Sprintf("postgres://%s:%s@localhost:%d/%s?%s", appUser, appPassword, cluster.Port, db, tls)
	fmt.Fprintf(env.stdout, "phiproxy demo: loading %d fake patients through phiproxy…\n", demoPatients)
	sample, err := demoLoad(ctx, through)
	if err != nil {
		stopServe()
		return errors.Join(fmt.Errorf("demo: loading rows through phiproxy: %w", err), <-served)
	}

	fmt.Fprintf(env.stdout, `
through phiproxy (plaintext):  psql "%[1]s"
PostgreSQL direct (ciphertext): psql "%[2]s"

Try these through phiproxy, then the first one direct:
  1. SELECT id, name, ssn, diagnosis, dob, mrn FROM patients WHERE ssn = '%[3]s';
  2. SELECT p.name, v.visited_at, v.notes FROM patients p JOIN visits v ON v.patient_ssn = p.ssn WHERE p.mrn = %[4]d;
  3. SELECT name, ssn FROM patients ORDER BY ssn LIMIT 5;    -- refused: SQLSTATE 0A000 (no ORDER BY on ciphertext)
Direct, writing plaintext into a PHI column is refused by PostgreSQL itself (SQLSTATE 23514):
     INSERT INTO patients (name, ssn) VALUES ('Eve', '000-00-0000');

config: %[5]s
files: %[6]s %[7]s (removed on exit)
Press Ctrl-C to stop.

`, through, direct, sample.ssn, sample.mrn, cfgPath, work, cluster.Dir)
	return <-served
}

// demoCreateSchema creates the sample schema as the demo user, with the
// envelope CHECK constraint on every PHI column.
func demoCreateSchema(ctx context.Context, cluster *pgcluster.Cluster, cfgPath, db, owner string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, cluster.DSN(cluster.SuperUser, cluster.SuperPassword, db, "sslmode=disable"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	stmts := []string{"SET ROLE " + pgx.Identifier{owner}.Sanitize(), demoSchema}
	for _, rel := range cfg.Relations() {
		schema, table, _ := strings.Cut(rel, ".")
		for name := range cfg.PHI[rel] {
			col, _ := cfg.Column(schema, table, name)
			stmts = append(stmts, crypto.EnvelopeCheckSQL(col))
		}
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("demo schema: %w", err)
		}
	}
	return nil
}

func demoWaitListening(ctx context.Context, addr string, served <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case err := <-served:
			if err == nil {
				err = errors.New("phiproxy stopped")
			}
			return err
		case <-ctx.Done():
			return errors.Join(ctx.Err(), <-served) // runServe stops on ctx too
		case <-time.After(30 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: phiproxy did not listen on %s", addr)
		}
	}
}

type demoSample struct {
	ssn string
	mrn int64
}

// demoLoad inserts fake patients and visits through the proxy in one
// pipelined batch per table, and returns one patient's ssn and mrn for the
// example queries.
func demoLoad(ctx context.Context, dsn string) (demoSample, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return demoSample{}, err
	}
	defer conn.Close(ctx)
	rng := rand.New(rand.NewPCG(6, 2026)) // fixed: the same clinic every run
	first := []string{"Ada", "Ben", "Chloe", "Dev", "Elif", "Farah", "Goran", "Hana", "Ivan", "June", "Kofi", "Lena", "Mateo", "Noor", "Omar", "Priya"}
	last := []string{"Alvarez", "Brown", "Chen", "Dubois", "Eze", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Kowalski", "Lopez", "Müller", "Nakamura", "Okafor", "Patel"}
	diagnoses := []string{"hypertension", "type 2 diabetes", "asthma", "migraine", "seasonal allergies", "hypothyroidism", "anxiety disorder", "osteoarthritis", "GERD", "iron-deficiency anemia"}
	notes := []string{"follow-up in 3 months", "blood panel ordered", "medication adjusted", "referred to specialist", "no change", "patient doing well"}

	var sample demoSample
	b := &pgx.Batch{}
	ssns := make([]string, demoPatients)
	for i := range demoPatients {
		ssns[i] = fmt.Sprintf("%03d-%02d-%04d", 100+rng.IntN(800), 10+rng.IntN(90), 1000+i)
		dob := time.Date(1935+rng.IntN(70), time.Month(1+rng.IntN(12)), 1+rng.IntN(28), 0, 0, 0, 0, time.UTC)
		mrn := int64(1_000_000 + i*7)
		if i == 0 {
			sample = demoSample{ssn: ssns[i], mrn: mrn}
		}
		b.Queue("INSERT INTO patients (id, name, ssn, diagnosis, dob, mrn) VALUES ($1, $2, $3, $4, $5, $6)",
			i+1, first[rng.IntN(len(first))]+" "+last[rng.IntN(len(last))], ssns[i], diagnoses[rng.IntN(len(diagnoses))], dob, mrn)
	}
	b.Queue("SELECT setval('patients_id_seq', $1)", demoPatients)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return demoSample{}, err
	}
	b = &pgx.Batch{}
	start := time.Date(2024, 1, 2, 9, 0, 0, 0, time.UTC)
	for i := range demoPatients {
		for range 1 + rng.IntN(3) {
			at := start.Add(time.Duration(rng.IntN(500*24)) * time.Hour)
			b.Queue("INSERT INTO visits (patient_id, patient_ssn, visited_at, notes) VALUES ($1, $2, $3, $4)",
				i+1, ssns[i], at, notes[rng.IntN(len(notes))])
		}
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return demoSample{}, err
	}
	return sample, nil
}

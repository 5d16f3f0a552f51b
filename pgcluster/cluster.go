package pgcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options shape a cluster. The zero value is a TLS-enabled cluster that
// requires scram-sha-256 for every TCP connection.
type Options struct {
	// NoTLS turns the server's ssl off.
	NoTLS bool
	// HBA lines are placed before the default
	// "host all all 127.0.0.1/32 scram-sha-256" rule.
	HBA []string
	// Conf lines are appended to postgresql.conf.
	Conf []string
	// Port to listen on; 0 picks a free one.
	Port int
	// Log receives the server's log output; nil keeps it in a file in the
	// cluster directory (see LogFile).
	Log io.Writer
}

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	Host          string
	Port          int
	Dir           string // root of everything the cluster owns
	DataDir       string
	LogFile       string
	BinDir        string
	SuperUser     string
	SuperPassword string
	CA            *CA
	// ServerCertFile and ServerKeyFile are the server's TLS files.
	ServerCertFile string
	ServerKeyFile  string

	cmd  *exec.Cmd
	done chan error
}

// Addr is host:port of the server.
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// SuperDSN connects as the superuser without TLS.
func (c *Cluster) SuperDSN() string {
	return c.DSN(c.SuperUser, c.SuperPassword, "postgres", "sslmode=disable")
}

// DSN builds a postgres:// URL for user/password/db with extra params such
// as "sslmode=verify-full".
func (c *Cluster) DSN(user, password, db string, params ...string) string {
	u := url.URL{Scheme: "postgres", Host: c.Addr(), Path: "/" + db}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	q := url.Values{}
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs sql (may hold several statements) as the superuser.
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.SuperDSN())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	return err
}

// BinDir finds the PostgreSQL server binaries: PGCLUSTER_BINDIR, then
// /usr/lib/postgresql/15/bin, then `pg_config --bindir`.
func BinDir() (string, error) {
	if d := os.Getenv("PGCLUSTER_BINDIR"); d != "" {
		return d, nil
	}
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/initdb"); err == nil {
		return "/usr/lib/postgresql/15/bin", nil
	}
	out, err := exec.Command("pg_config", "--bindir").Output()
	if err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("pgcluster: PostgreSQL server binaries not found (install postgresql-15, or set PGCLUSTER_BINDIR)")
}

// owner is the unprivileged account the server runs as when we are root.
type owner struct {
	uid, gid uint32
	asOther  bool
}

func serverOwner() (owner, error) {
	if os.Geteuid() != 0 {
		return owner{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return owner{}, fmt.Errorf("pgcluster: running as root needs the unprivileged 'postgres' system user (install postgresql-15): %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return owner{uid: uint32(uid), gid: uint32(gid), asOther: true}, nil
}

// command runs name as the cluster's owner; ctx ends it (the server
// itself gets context.Background(): it outlives Start, Stop ends it).
func (o owner) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if o.asOther {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: o.uid, Gid: o.gid}
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	return cmd
}

func (o owner) chown(paths ...string) error {
	if !o.asOther {
		return nil
	}
	for _, p := range paths {
		if err := os.Lchown(p, int(o.uid), int(o.gid)); err != nil {
			return err
		}
	}
	return nil
}

// FreePort returns a currently free loopback TCP port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start creates and starts a cluster. The caller must Stop it.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	own, err := serverOwner()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "phiproxy-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: "127.0.0.1", Dir: dir, DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "server.log"),
		BinDir: bin, SuperUser: "postgres", SuperPassword: randomHex(16)}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	caDir := filepath.Join(dir, "ca")
	if err := os.Mkdir(caDir, 0o755); err != nil {
		return nil, err
	}
	if c.CA, err = NewCA(caDir); err != nil {
		return nil, err
	}
	if c.ServerCertFile, c.ServerKeyFile, err = c.CA.Issue("localhost", "127.0.0.1"); err != nil {
		return nil, err
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.SuperPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := own.chown(dir, pwfile, c.ServerKeyFile, c.ServerCertFile); err != nil {
		return nil, err
	}

	initdb := own.command(ctx, filepath.Join(bin, "initdb"), "-D", c.DataDir, "-U", c.SuperUser, "--pwfile", pwfile,
		"--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgcluster: initdb: %v\n%s", err, out)
	}
	os.Remove(pwfile)

	c.Port = opts.Port
	if c.Port == 0 {
		if c.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", c.Port),
		fmt.Sprintf("unix_socket_directories = '%s'", dir),
		"max_connections = 120",
		"shared_buffers = 64MB",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"password_encryption = 'scram-sha-256'",
		"log_min_messages = warning",
		"logging_collector = off",
	}
	if !opts.NoTLS {
		conf = append(conf, "ssl = on",
			fmt.Sprintf("ssl_cert_file = '%s'", c.ServerCertFile),
			fmt.Sprintf("ssl_key_file = '%s'", c.ServerKeyFile),
			fmt.Sprintf("ssl_ca_file = '%s'", c.CA.CertFile))
	}
	conf = append(conf, opts.Conf...)
	if err := appendFile(filepath.Join(c.DataDir, "postgresql.conf"), strings.Join(conf, "\n")+"\n"); err != nil {
		return nil, err
	}
	hba := append([]string{}, opts.HBA...)
	hba = append(hba,
		"local all all scram-sha-256",
		"host all all 127.0.0.1/32 scram-sha-256",
		"host all all ::1/128 scram-sha-256")
	if err := os.WriteFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(strings.Join(hba, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := own.chown(filepath.Join(c.DataDir, "pg_hba.conf")); err != nil {
		return nil, err
	}

	c.cmd = own.command(context.Background(), filepath.Join(bin, "postgres"), "-D", c.DataDir)
	var logw io.Writer = opts.Log
	if logw == nil {
		f, err := os.Create(c.LogFile)
		if err != nil {
			return nil, err
		}
		defer f.Close() // the child keeps its own descriptor
		logw = f
	}
	c.cmd.Stdout = logw
	c.cmd.Stderr = logw
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgcluster: start postgres: %w", err)
	}
	c.done = make(chan error, 1)
	go func() { c.done <- c.cmd.Wait() }()

	if err := c.waitReady(ctx); err != nil {
		c.kill()
		log, _ := os.ReadFile(c.LogFile)
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, tail(log, 2000))
	}
	ok = true
	return c, nil
}

func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-c.done:
			c.done <- err
			return fmt.Errorf("pgcluster: postgres exited during start: %v", err)
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.SuperDSN())
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("pgcluster: server not ready: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) kill() {
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
	}
}

// Stop shuts the server down (fast shutdown) and removes every file the
// cluster owned.
func (c *Cluster) Stop() error {
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(20 * time.Second):
			c.cmd.Process.Signal(syscall.SIGKILL)
			<-c.done
		}
		c.cmd = nil
	}
	return os.RemoveAll(c.Dir)
}

// StopServer stops the server process, keeping its data directory and port
// so StartServer can bring it back (used to test upstream loss).
func (c *Cluster) StopServer() error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	c.cmd.Process.Signal(syscall.SIGINT)
	<-c.done
	c.cmd = nil
	return nil
}

// StartServer starts the server again after StopServer.
func (c *Cluster) StartServer(ctx context.Context) error {
	own, err := serverOwner()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(c.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	c.cmd = own.command(context.Background(), filepath.Join(c.BinDir, "postgres"), "-D", c.DataDir)
	c.cmd.Stdout, c.cmd.Stderr = f, f
	if err := c.cmd.Start(); err != nil {
		return err
	}
	c.done = make(chan error, 1)
	go func() { c.done <- c.cmd.Wait() }()
	return c.waitReady(ctx)
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("BUG: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return bytes.TrimSpace(b)
}

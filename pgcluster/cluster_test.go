package pgcluster

import (
	"context"
	"crypto/tls"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestClusterLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := c.Dir
	t.Run("scram is required on TCP", func(t *testing.T) {
		_, err := pgx.Connect(ctx, c.DSN("postgres", "wrong", "postgres", "sslmode=disable"))
		if err == nil {
			t.Fatal("a wrong password was accepted")
		}
	})
	t.Run("verify-full TLS against the generated CA", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, c.DSN("postgres", c.SuperPassword, "postgres", "sslmode=verify-full", "sslrootcert="+c.CA.CertFile, "host=localhost"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
			t.Fatal("connection is not TLS")
		}
		var v string
		if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v[:3] != "15." {
			t.Fatalf("server_version %q, want 15.x", v)
		}
	})
	t.Run("Exec runs as superuser", func(t *testing.T) {
		if err := c.Exec(ctx, "CREATE ROLE alice LOGIN PASSWORD 'pw'; CREATE TABLE t(x int)"); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, c.DSN("alice", "pw", "postgres", "sslmode=require"))
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	})
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cluster dir %s left behind", dir)
	}
}

package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const jdbcJar = "/usr/share/java/postgresql.jar"

var javaClasses perRun[string]

// compileJava compiles every Java program in clients/java once per package
// run and returns the directory of the classes.
func compileJava(t *testing.T) string {
	t.Helper()
	return javaClasses.get(t, "javac (is default-jdk-headless / libpostgresql-jdbc-java installed? make test installs them)", func() (string, error) {
		dir := filepath.Join(fixture.work, "java")
		srcs, err := filepath.Glob("clients/java/*.java")
		if err != nil || len(srcs) == 0 {
			return "", fmt.Errorf("no Java sources in clients/java: %v", err)
		}
		if out, err := exec.Command("javac", append([]string{"-d", dir, "-cp", jdbcJar}, srcs...)...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("%v\n%s", err, out)
		}
		return dir, nil
	})
}

func jdbc(t *testing.T, class string, args ...string) string {
	t.Helper()
	dir := compileJava(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "java", append([]string{"-cp", dir + ":" + jdbcJar, class}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("java %s: %v\n%s", class, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestAuthMatrixJDBC(t *testing.T) {
	e := fixture
	for _, upstream := range []string{"verify-full", "disable"} {
		p := startProxy(t, proxyOpts{clientTLS: "allow", upstreamSSL: upstream})
		for _, ssl := range []string{"require", "disable"} {
			t.Run("upstream "+upstream+", client sslmode "+ssl, func(t *testing.T) {
				url := func(hp string) string { return "jdbc:postgresql://" + hp + "/clinic?sslmode=" + ssl }
				q := "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
				got := jdbc(t, "Probe", url(p.addr()), "app", "app-pw", q)
				want := "app\tt"
				if upstream == "disable" {
					want = "app\tf"
				}
				if got != want {
					t.Fatalf("through the proxy: %q, want %q", got, want)
				}
				direct := jdbc(t, "Probe", url(e.cluster.Addr()), "app", "app-pw", "SELECT current_user")
				if direct != "app" {
					t.Fatalf("direct: %q", direct)
				}
			})
		}
	}
	p := startProxy(t, proxyOpts{})
	for _, f := range []struct{ name, user, password string }{
		{"wrong password", "app", "nope"},
		{"unknown role", "ghost", "nope"},
		{"NOLOGIN role", "nologin_user", "nl-pw"},
		{"expired VALID UNTIL", "expired_user", "ex-pw"},
	} {
		t.Run(f.name, func(t *testing.T) {
			url := func(hp string) string { return "jdbc:postgresql://" + hp + "/postgres?sslmode=require" }
			got := jdbc(t, "Probe", url(p.addr()), f.user, f.password, "SELECT 1")
			want := jdbc(t, "Probe", url(e.cluster.Addr()), f.user, f.password, "SELECT 1")
			if got != want || !strings.HasPrefix(got, "ERROR 28") {
				t.Fatalf("through the proxy: %s\ndirect: %s", got, want)
			}
		})
	}
}

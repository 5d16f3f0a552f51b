package integration

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

var (
	demoThroughRe = regexp.MustCompile(`^through phiproxy \(plaintext\):\s+psql "([^"]+)"`)
	demoDirectRe  = regexp.MustCompile(`^PostgreSQL direct \(ciphertext\):\s+psql "([^"]+)"`)
	demoQueryRe   = regexp.MustCompile(`^\s+([123])\. (.+;)(?:\s+-- refused: SQLSTATE ([0-9A-Z]{5}).*)?$`)
	demoFilesRe   = regexp.MustCompile(`^files: (\S+) (\S+) \(removed on exit\)`)
)

// TestPHIDemo runs `phiproxy demo` as a user would: it parses the printed
// connection string through the proxy, runs the three example queries with
// psql (the refused one must fail with the printed SQLSTATE), checks the
// direct connection sees ciphertext, then sends SIGINT and expects a clean
// exit with every temporary directory removed.
func TestPHIDemo(t *testing.T) {
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fixture.binary, "demo", "--port", strconv.Itoa(port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var printed strings.Builder
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("demo stdout:\n%s\ndemo stderr:\n%s", printed.String(), stderr.String())
		}
	}()

	// Read what the demo prints until it is ready.
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var through, direct string
	var dirs []string
	type example struct{ sql, sqlstate string }
	examples := map[string]example{}
	timeout := time.After(3 * time.Minute)
read:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				err := <-done
				exited = true
				t.Fatalf("demo stopped before it was ready: %v", err)
			}
			printed.WriteString(l + "\n")
			if m := demoThroughRe.FindStringSubmatch(l); m != nil {
				through = m[1]
			}
			if m := demoDirectRe.FindStringSubmatch(l); m != nil {
				direct = m[1]
			}
			if m := demoQueryRe.FindStringSubmatch(l); m != nil {
				examples[m[1]] = example{m[2], m[3]}
			}
			if m := demoFilesRe.FindStringSubmatch(l); m != nil {
				dirs = m[1:]
			}
			if strings.HasPrefix(l, "Press Ctrl-C") {
				break read
			}
		case <-timeout:
			t.Fatal("demo not ready after 3 minutes")
		}
	}
	go func() {
		for range lines { // keep draining
		}
	}()
	if through == "" || direct == "" || len(examples) != 3 || len(dirs) != 2 {
		t.Fatalf("cannot parse the demo's output: through=%q direct=%q examples=%d dirs=%v", through, direct, len(examples), dirs)
	}
	if !strings.Contains(through, ":"+strconv.Itoa(port)+"/") {
		t.Fatalf("the through-proxy connection string does not use --port %d: %s", port, through)
	}

	refused := 0
	for _, k := range []string{"1", "2", "3"} {
		ex := examples[k]
		out, err := psql(t, through, "-A", "-c", `\set VERBOSITY verbose`, "-c", ex.sql)
		if ex.sqlstate != "" {
			refused++
			if err == nil || !strings.Contains(out, "ERROR:  "+ex.sqlstate+":") {
				t.Fatalf("example %s should be refused with %s: %v\n%s", k, ex.sqlstate, err, out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("example %s: %v\n%s", k, err, out)
		}
		if m := regexp.MustCompile(`\((\d+) rows?\)`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Fatalf("example %s returned no rows:\n%s", k, out)
		}
		if strings.Contains(out, `\x504801`) {
			t.Fatalf("example %s shows ciphertext through the proxy:\n%s", k, out)
		}
	}
	if refused != 1 {
		t.Fatalf("%d refused examples, want 1", refused)
	}
	// Direct, the first example's PHI columns are ciphertext, and the demo
	// loaded a few hundred rows.
	out, err := psql(t, direct, "-A", "-t", "-c", `SELECT count(*), bool_and(substring(ssn from 1 for 3) = '\x504801'::bytea AND substring(dob from 1 for 3) = '\x504801'::bytea) FROM patients`)
	if err != nil {
		t.Fatalf("direct: %v\n%s", err, out)
	}
	f := strings.Split(strings.TrimSpace(out), "|")
	if n, _ := strconv.Atoi(f[0]); n < 200 || len(f) != 2 || f[1] != "t" {
		t.Fatalf("direct: want a few hundred rows, all ciphertext: %q", out)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Fatalf("demo did not exit cleanly after SIGINT: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("demo still running 60s after SIGINT")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still exists after the demo exited (%v)", d, err)
		}
	}
}

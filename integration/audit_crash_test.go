package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
)

// SIGKILL of phiproxy under load: after a restart the trail verifies,
// records that the previous run did not stop cleanly, and holds an event
// for every statement whose rows reached a client (strict mode writes it
// before the first row leaves).
func TestAuditSurvivesSIGKILLUnderLoad(t *testing.T) {
	f := phiFixture(t)
	p := startProxy(t, proxyOpts{catalogDB: phiDB, extra: f.extra + "audit: {context_tags: [req]}\n"})
	dsn := fixture.dsn(p.addr(), "app", "app-pw", phiDB)
	if out, err := psql(t, dsn, "-c", "INSERT INTO patients (id, name, ssn) VALUES (1, 'k', '123-45-6789')"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var served sync.Map // req tag → statement whose row reached the client
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				return
			}
			defer conn.Close(context.Background())
			for {
				select {
				case <-stop:
					return
				default:
				}
				req := fmt.Sprintf("r%d", n.Add(1))
				var ssn string
				if err := conn.QueryRow(context.Background(), "/*req='"+req+"'*/ SELECT ssn FROM patients WHERE id = $1", 1).Scan(&ssn); err != nil {
					return // the proxy is gone
				}
				served.Store(req, true)
			}
		}()
	}
	time.Sleep(time.Second)
	p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err // for the harness's cleanup
	close(stop)
	wg.Wait()
	count := 0
	served.Range(func(any, any) bool { count++; return true })
	if count < 20 {
		t.Fatalf("only %d statements served before the kill", count)
	}

	// Restart on the same config: the trail continues.
	cmd := exec.Command(fixture.binary, "serve", "--config", p.config)
	cmd.Env = append(os.Environ(), "PGPASSFILE="+fixture.pgpass)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", p.addr(), time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("phiproxy did not restart:\n%s", out.String())
		}
		time.Sleep(30 * time.Millisecond)
	}
	if v, err := psql(t, dsn, "-A", "-t", "-c", "SELECT ssn FROM patients WHERE id = 1"); err != nil || strings.TrimSpace(v) != "123-45-6789" {
		t.Fatalf("after the restart: %v\n%s", err, v)
	}
	vout, err := exec.Command(fixture.binary, "audit", "verify", "--config", p.config).CombinedOutput()
	if err != nil {
		t.Fatalf("audit verify after SIGKILL: %v\n%s", err, vout)
	}

	// Every served statement has its event; the second start says the
	// first run did not stop cleanly.
	dir := filepath.Join(filepath.Dir(p.config), "audit")
	segs, err := audit.Segments(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := audit.NewReader(segs)
	defer r.Close()
	logged := map[string]bool{}
	var starts []*audit.Event
	for r.Next() {
		ev, err := audit.Parse(r.Line().Bytes)
		if err != nil {
			continue // the line the restart is writing may be partial
		}
		if ev.Action == audit.ActionStart {
			starts = append(starts, ev)
		}
		if ev.Action == audit.ActionRead && ev.Context["req"] != "" {
			logged[ev.Context["req"]] = true
		}
	}
	missing := 0
	served.Range(func(k, _ any) bool {
		if !logged[k.(string)] {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Fatalf("%d of %d statements whose rows reached the client have no event", missing, count)
	}
	if len(starts) != 2 || starts[1].Clean == nil || *starts[1].Clean {
		t.Fatalf("start events after SIGKILL: %d, second clean=%v", len(starts), starts[len(starts)-1].Clean)
	}
	t.Logf("%d statements served before SIGKILL, all in the trail; verify: %s", count, strings.TrimSpace(string(vout)))
}

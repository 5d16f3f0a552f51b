package main

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	for _, c := range []struct {
		line string
		want procTimes
		ok   bool
	}{
		{"4242 (postgres) S 17 4242 4242 0 -1 4194560 900 0 0 0 120 35 7 3 20 0 1 0 100 0 0", procTimes{ppid: 17, own: 155, dead: 10}, true},
		// A command name with spaces and a parenthesis of its own.
		{"7 (postgres: bench bench 127.0.0.1(5) idle) R 4242 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 9 0 0", procTimes{ppid: 4242, own: 3}, true},
		{"7 (cut) R 1 2 3", procTimes{}, false},
		{"garbage", procTimes{}, false},
	} {
		got, ok := parseProcStat([]byte(c.line))
		if ok != c.ok || got != c.want {
			t.Errorf("parseProcStat(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

// treeCPU must count a child's CPU while it runs and after it is reaped.
func TestTreeCPUCountsReapedChildren(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	before := treeCPU(os.Getpid())
	cmd := exec.Command(sh, "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	after := treeCPU(os.Getpid())
	used := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if used < 50*time.Millisecond {
		t.Fatalf("the child used only %v of CPU; the test needs more", used)
	}
	if got := after - before; got < used-2*clockTick {
		t.Fatalf("treeCPU grew by %v, the reaped child alone used %v", got, used)
	}
}

package main

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// clockTick is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on every Linux the project runs on).
const clockTick = 10 * time.Millisecond

// procTimes is what treeCPU needs from one /proc/PID/stat.
type procTimes struct {
	ppid int
	own  int64 // utime + stime, in ticks
	dead int64 // cutime + cstime: the children it has reaped
}

func readProcStat(pid int) (procTimes, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procTimes{}, false
	}
	return parseProcStat(b)
}

func parseProcStat(b []byte) (procTimes, bool) {
	// The command name (field 2) may hold spaces; fields after it are
	// plain numbers.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procTimes{}, false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 15 {
		return procTimes{}, false
	}
	num := func(n int) int64 { v, _ := strconv.ParseInt(string(f[n-3]), 10, 64); return v }
	return procTimes{ppid: int(num(4)), own: num(14) + num(15), dead: num(16) + num(17)}, true
}

// treeCPU returns the CPU time (user + system) the process tree rooted at
// root has used so far: every live process in it, and the children they
// have reaped (a PostgreSQL backend's time moves to the postmaster's when
// it exits).
func treeCPU(root int) time.Duration {
	if root <= 0 {
		return 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	procs := map[int]procTimes{}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if t, ok := readProcStat(pid); ok {
			procs[pid] = t
			children[t.ppid] = append(children[t.ppid], pid)
		}
	}
	var ticks int64
	stack := []int{root}
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		t, ok := procs[pid]
		if !ok {
			continue
		}
		ticks += t.own + t.dead
		stack = append(stack, children[pid]...)
	}
	return time.Duration(ticks) * clockTick
}

// cpuMeter measures the CPU per transaction of the proxy a target goes
// through and of the PostgreSQL server, around one pgbench run.
type cpuMeter struct{ pgRoot int }

func (m cpuMeter) run(t target, fn func() (result, error)) (result, error) {
	px0, pg0 := treeCPU(t.pid), treeCPU(m.pgRoot)
	r, err := fn()
	if err != nil || r.txns == 0 {
		return r, err
	}
	px1, pg1 := treeCPU(t.pid), treeCPU(m.pgRoot)
	perTx := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(r.txns) }
	if t.pid > 0 {
		r.proxyUS = perTx(px1 - px0)
	}
	r.pgUS = perTx(pg1 - pg0)
	return r, nil
}

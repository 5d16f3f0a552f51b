package proxy

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// What a client sends before it has authenticated is the attacker's: a
// second review saw every failed login log the client's whole
// application_name (9 KB a try) at INFO, with no limit on how often. Log
// lines keep at most logValueMax bytes of each client-supplied string,
// and failed connections are logged per client host at most
// failureBurst times a failureWindow; the rest are counted and reported
// in aggregate.

// logValueMax is how many bytes of a client-supplied string (user,
// database, application_name, an error that quotes the user name) a log
// line keeps.
const logValueMax = 64

// clip returns s cut to logValueMax bytes on a UTF-8 boundary, with how
// much was cut.
func clip(s string) string {
	return clipTo(s, logValueMax)
}

func clipTo(s string, max int) string {
	if len(s) <= max {
		return s
	}
	n := max
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// clipErr is an error's text for a log line: each of the client-supplied
// strings quoted in it (errors of the startup phase quote the user name)
// clipped, and the whole cut to a few lines' worth.
func clipErr(err error, quoted ...string) string {
	if err == nil {
		return ""
	}
	text := err.Error()
	for _, q := range quoted {
		if len(q) > logValueMax {
			text = strings.ReplaceAll(text, q, clip(q))
		}
	}
	return clipTo(text, 4*logValueMax)
}

// Failure log limits (per client host).
const (
	failureBurst  = 5
	failureWindow = time.Minute
	// failureAggregate: while suppressed, one line per this many
	// failures says how many there were.
	failureAggregate = 100
	// failureHosts bounds the hosts tracked; beyond it, hosts share one
	// counter.
	failureHosts = 4096
)

// failureLog decides which failed connections get a log line. It is
// owned by a Server; safe for concurrent use.
type failureLog struct {
	mu     sync.Mutex
	byHost map[string]*failureCount
}

type failureCount struct {
	start      time.Time
	n          int // failures in the window
	suppressed int // not logged since the last line
}

// note records a failure from addr at now. It reports whether to log
// it, and how many failures from the same host were suppressed since
// the last line logged for it (to be logged with it).
func (f *failureLog) note(addr net.Addr, now time.Time) (log bool, suppressed int) {
	host := ""
	if addr != nil {
		host = addr.String()
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byHost == nil {
		f.byHost = map[string]*failureCount{}
	}
	c := f.byHost[host]
	if c == nil {
		if len(f.byHost) >= failureHosts {
			for h, o := range f.byHost {
				if now.Sub(o.start) >= failureWindow && o.suppressed == 0 {
					delete(f.byHost, h)
				}
			}
		}
		if len(f.byHost) >= failureHosts {
			host = "*"
		}
		if c = f.byHost[host]; c == nil {
			c = &failureCount{start: now}
			f.byHost[host] = c
		}
	}
	if now.Sub(c.start) >= failureWindow {
		c.start, c.n = now, 0
	}
	c.n++
	if c.n <= failureBurst || c.suppressed+1 >= failureAggregate {
		suppressed, c.suppressed = c.suppressed, 0
		return true, suppressed
	}
	c.suppressed++
	return false, 0
}

package migrate

import (
	"fmt"
	"io"
	"time"
)

// progress reports a phase's rows: on a terminal a line redrawn in place
// (rows, rows/s, ETA), otherwise a plain line every few seconds and at the
// end.
type progress struct {
	out   io.Writer
	tty   bool
	what  string
	total int64 // estimate; 0 when unknown
	done  int64
	start time.Time
	last  time.Time
	every time.Duration
}

func newProgress(o *Options, what string, total int64) *progress {
	now := time.Now()
	every := 5 * time.Second
	if o.TTY {
		every = 200 * time.Millisecond
	}
	return &progress{out: o.Out, tty: o.TTY, what: what, total: total, start: now, last: now, every: every}
}

func (p *progress) add(n int64) {
	p.done += n
	if time.Since(p.last) >= p.every {
		p.print(false)
	}
}

// rate is rows per second so far.
func (p *progress) rate() float64 {
	s := time.Since(p.start).Seconds()
	if s <= 0 {
		return 0
	}
	return float64(p.done) / s
}

func (p *progress) print(final bool) {
	p.last = time.Now()
	if p.out == nil {
		return
	}
	line := fmt.Sprintf("%s: %d", p.what, p.done)
	if p.total > 0 {
		p.total = max(p.total, p.done) // rows rewritten meanwhile are done again
		line += fmt.Sprintf("/%d rows (%.0f%%)", p.total, 100*float64(p.done)/float64(p.total))
	} else {
		line += " rows"
	}
	r := p.rate()
	line += fmt.Sprintf(", %.0f rows/s", r)
	if !final && p.total > p.done && r > 0 {
		eta := time.Duration(float64(p.total-p.done) / r * float64(time.Second)).Round(time.Second)
		line += ", ETA " + eta.String()
	}
	if final {
		line += fmt.Sprintf(", %s", time.Since(p.start).Round(time.Millisecond))
	}
	switch {
	case p.tty && final:
		fmt.Fprintf(p.out, "\r\033[K%s\n", line)
	case p.tty:
		fmt.Fprintf(p.out, "\r\033[K%s", line)
	default:
		fmt.Fprintln(p.out, line)
	}
}

// finish prints the phase's last line.
func (p *progress) finish() { p.print(true) }

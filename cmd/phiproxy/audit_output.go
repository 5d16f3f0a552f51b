package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/phiproxy/phiproxy/audit"
)

// eventWriter prints selected events in one format.
type eventWriter interface {
	write(line []byte, ev *audit.Event) error
	flush() error
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// newEventWriter makes the writer of format; "" picks table on a terminal,
// json elsewhere. jsonl is json's name in export.
func newEventWriter(w io.Writer, format string) (eventWriter, error) {
	if format == "" {
		format = "json"
		if isTerminal(w) {
			format = "table"
		}
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	switch format {
	case "json", "jsonl":
		return &jsonWriter{w: bw}, nil
	case "csv":
		cw := &csvWriter{w: csv.NewWriter(bw), bw: bw}
		return cw, cw.w.Write(csvHeader)
	case "table":
		tw := &tableWriter{w: bw}
		return tw, tw.header()
	}
	return nil, usagef("--format %q: use table, json or csv (jsonl or csv for export)", format)
}

// jsonWriter writes the event lines exactly as the trail holds them, so
// that a verifier or a SIEM sees the same bytes (and hashes).
type jsonWriter struct{ w *bufio.Writer }

func (j *jsonWriter) write(line []byte, _ *audit.Event) error {
	j.w.Write(line)
	return j.w.WriteByte('\n')
}

func (j *jsonWriter) flush() error { return j.w.Flush() }

// csvHeader is the event's fields in the contract's order (DESIGN §8),
// then its extension fields, then prev and hash.
var csvHeader = []string{"v", "seq", "ts", "instance", "session", "db_user", "roles", "end_user", "application",
	"client", "database", "tls", "action", "relations", "columns", "decision", "reason", "fingerprint", "query",
	"rows", "error", "role", "context", "protocol", "ref", "clean", "detail", "signature", "key_id", "prev", "hash"}

type csvWriter struct {
	w   *csv.Writer
	bw  *bufio.Writer
	rec []string
}

func (c *csvWriter) write(line []byte, e *audit.Event) error {
	e, err := decoded(line, e)
	if err != nil {
		return err
	}
	u := strconv.FormatUint
	opt := func(set bool, s string) string {
		if !set {
			return ""
		}
		return s
	}
	var rows, clean string
	if e.Rows != nil {
		rows = strconv.FormatInt(*e.Rows, 10)
	}
	if e.Clean != nil {
		clean = strconv.FormatBool(*e.Clean)
	}
	c.rec = append(c.rec[:0], strconv.Itoa(e.V), u(e.Seq, 10), e.TS, cell(e.Instance), cell(e.Session), cell(e.DBUser),
		cell(strings.Join(e.Roles, ";")), cell(e.EndUser), cell(e.Application), cell(e.Client), cell(e.Database),
		strconv.FormatBool(e.TLS), cell(e.Action), cell(strings.Join(e.Relations, ";")), cell(strings.Join(e.Columns, ";")),
		cell(e.Decision), cell(e.Reason), cell(e.Fingerprint), cell(e.Query), rows, cell(e.Error), cell(e.Role),
		cell(contextCell(e.Context)), cell(e.Protocol), opt(e.Ref != 0, u(e.Ref, 10)), clean, cell(e.Detail),
		e.Signature, opt(e.KeyID != 0, u(uint64(e.KeyID), 10)), e.Prev, e.Hash)
	return c.w.Write(c.rec)
}

func (c *csvWriter) flush() error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return err
	}
	return c.bw.Flush()
}

// cell defuses spreadsheet formulas: several fields (application, end
// user, context tags) come from clients, and a cell starting with = + -
// or @ would run as a formula in a spreadsheet (OWASP's CSV injection
// advice: prefix a quote).
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func contextCell(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ";")
}

// tableWriter prints fixed-width columns, so that rows line up without
// holding them all (and tail -f can print each as it comes).
type tableWriter struct {
	w   *bufio.Writer
	buf strings.Builder
}

var tableColumns = []struct {
	name  string
	width int // 0: the rest of the line
	right bool
}{
	{"TIME", 20, false}, {"SEQ", 8, true}, {"ACTION", 10, false}, {"DECISION", 8, false},
	{"DB_USER", 14, false}, {"END_USER", 14, false}, {"ROLES", 18, false}, {"CLIENT", 21, false},
	{"COLUMNS", 30, false}, {"ROWS", 6, true}, {"ERROR", 5, false}, {"QUERY", 0, false},
}

func (t *tableWriter) header() error {
	cells := make([]string, len(tableColumns))
	for i, c := range tableColumns {
		cells[i] = c.name
	}
	return t.row(cells)
}

func (t *tableWriter) row(cells []string) error {
	t.buf.Reset()
	for i, c := range tableColumns {
		s := printable(cells[i])
		if c.width == 0 {
			t.buf.WriteString(s)
			break
		}
		if n := utf8.RuneCountInString(s); n > c.width {
			s = string([]rune(s)[:c.width-1]) + "…"
		} else if c.right {
			s = strings.Repeat(" ", c.width-n) + s
		} else {
			s += strings.Repeat(" ", c.width-n)
		}
		t.buf.WriteString(s)
		t.buf.WriteString("  ")
	}
	t.w.WriteString(strings.TrimRight(t.buf.String(), " "))
	return t.w.WriteByte('\n')
}

func (t *tableWriter) write(line []byte, e *audit.Event) error {
	e, err := decoded(line, e)
	if err != nil {
		return err
	}
	ts := e.TS
	if tm, err := e.Time(); err == nil {
		ts = tm.Format(time.RFC3339)
	}
	rows := ""
	if e.Rows != nil {
		rows = strconv.FormatInt(*e.Rows, 10)
	}
	roles := strings.Join(e.Roles, ",")
	if e.Role != "" && e.Role != e.DBUser {
		roles = e.Role + " (" + roles + ")"
	}
	query := e.Query
	switch {
	case e.Action == audit.ActionCompletion:
		query = fmt.Sprintf("outcome of seq %d", e.Ref)
	case query == "":
		query = e.Detail
	}
	return t.row([]string{ts, strconv.FormatUint(e.Seq, 10), e.Action, e.Decision, e.DBUser, e.EndUser, roles,
		e.Client, strings.Join(e.Columns, ","), rows, e.Error, query})
}

func (t *tableWriter) flush() error { return t.w.Flush() }

// printable keeps terminal control sequences that a client could have put
// in its application name or end user out of the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}

// scan streams the selected events of the trail to w.
func (a *auditCmd) scan(env *cmdEnv, w eventWriter) error {
	segs, err := a.segments()
	if err != nil {
		return err
	}
	r := audit.NewReader(segs)
	defer r.Close()
	st, err := audit.Scan(r, audit.NewMatcher(a.filter), func(l *audit.Line, ev *audit.Event) error {
		return w.write(l.Bytes, ev)
	})
	if ferr := w.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return runtimeError{err}
	}
	if st.Unreadable > 0 {
		fmt.Fprintf(env.stderr, "phiproxy: warning: %d lines could not be read; run `phiproxy audit verify`\n", st.Unreadable)
	}
	return nil
}

func auditSearch(_ context.Context, env *cmdEnv, a *auditCmd) error {
	if a.format == "jsonl" {
		return usagef("audit search: --format table, json or csv")
	}
	w, err := newEventWriter(env.stdout, a.format)
	if err != nil {
		return err
	}
	return a.scan(env, w)
}

func auditExport(_ context.Context, env *cmdEnv, a *auditCmd) error {
	if a.format != "jsonl" && a.format != "csv" {
		return usagef("audit export: --format jsonl or csv")
	}
	out := env.stdout
	var f *os.File
	if a.output != "" {
		var err error
		f, err = os.OpenFile(a.output, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return usageError{err}
		}
		out = f
	}
	w, err := newEventWriter(out, a.format)
	if err == nil {
		err = a.scan(env, w)
	}
	if f != nil {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = runtimeError{cerr}
		}
	}
	return err
}

// auditTail prints the last -n events (that match the filters), then with
// -f the new ones as they are written, until ctx ends (SIGINT, SIGTERM).
func auditTail(ctx context.Context, env *cmdEnv, a *auditCmd) error {
	if a.n < 0 {
		return usagef("audit tail: -n must not be negative")
	}
	if a.format == "jsonl" {
		a.format = "json"
	}
	w, err := newEventWriter(env.stdout, a.format)
	if err != nil {
		return err
	}
	segs, err := a.segments()
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		if !a.follow {
			return w.flush()
		}
		// Wait for the first file.
		for len(segs) == 0 {
			if err := sleep(ctx, a.poll); err != nil {
				return w.flush()
			}
			if segs, err = a.segments(); err != nil {
				return err
			}
		}
	}
	if a.filter.Empty() {
		// Start reading where the last n lines are.
		if segs, err = audit.TailSegments(segs, a.n); err != nil {
			return runtimeError{err}
		}
	}
	m := audit.NewMatcher(a.filter)
	fl := audit.NewFollower(a.dir, segs[0])
	// The last n selected lines, in a ring.
	ring := make([][]byte, 0, a.n)
	start := 0
	err = fl.Poll(func(l *audit.Line) error {
		if _, ok, _ := m.Match(l.Bytes); !ok || a.n == 0 {
			return nil
		}
		if len(ring) < a.n {
			ring = append(ring, append([]byte(nil), l.Bytes...))
			return nil
		}
		ring[start] = append(ring[start][:0], l.Bytes...)
		start = (start + 1) % a.n
		return nil
	})
	if err != nil {
		return runtimeError{err}
	}
	for i := range ring {
		line := ring[(start+i)%len(ring)]
		if err := w.write(line, nil); err != nil {
			return runtimeError{err}
		}
	}
	if err := w.flush(); err != nil || !a.follow {
		return err
	}
	for {
		if sleep(ctx, a.poll) != nil {
			return nil
		}
		err := fl.Poll(func(l *audit.Line) error {
			if ev, ok, _ := m.Match(l.Bytes); ok {
				return w.write(l.Bytes, ev)
			}
			return nil
		})
		if ferr := w.flush(); err == nil {
			err = ferr
		}
		if err != nil {
			return runtimeError{err}
		}
	}
}

// decoded returns ev, or the event of line when the search did not need
// to decode it.
func decoded(line []byte, ev *audit.Event) (*audit.Event, error) {
	if ev != nil {
		return ev, nil
	}
	// Search and export show the trail as it is; verify judges it.
	var e audit.Event
	if err := json.Unmarshal(line, &e); err != nil {
		return nil, fmt.Errorf("unreadable line: %v", err)
	}
	return &e, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

package phi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/observe"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Observe mode (enforce: observe; docs/observe.md). An observed column is
// plaintext in PostgreSQL, so the planner that decides what runs (the
// snapshot's planner) does not know it as PHI: a statement on observed
// columns only is forwarded exactly as the client sent it, and in a
// statement that also touches columns in enforce: on, the observed ones
// are ordinary plaintext columns next to the enforced ones. A second
// planner (snapshot.watch) knows every configured column, the observed
// ones as the bytea they will become, with its own plan cache: its plan of
// the same text is the verdict enforcement would give, recorded in the
// coverage store and never acted upon.

// observeFlushInterval is how often the coverage store is written.
const observeFlushInterval = 10 * time.Second

// observedIdents returns the identities of cfg's observed columns (nil
// when there is none).
func observedIdents(cfg *config.Config) map[string]bool {
	var m map[string]bool
	for _, c := range cfg.Columns() {
		if c.Observed() {
			if m == nil {
				m = map[string]bool{}
			}
			m[c.Ident()] = true
		}
	}
	return m
}

// openCoverage opens the coverage store in cfg's state_dir and starts
// writing it periodically (New; Close writes it a last time).
func (p *Proxy) openCoverage(cfg *config.Config) error {
	path := filepath.Join(cfg.StateDir, observe.FileName)
	st, err := observe.Open(path, nil)
	if err != nil {
		// Records are no reason not to serve: keep the unreadable file
		// aside and start counting again.
		aside := path + ".unreadable-" + time.Now().UTC().Format("20060102T150405Z")
		p.log.Warn("observe: coverage records unreadable; kept aside, counting starts again", "path", path, "aside", aside, "err", err)
		if rerr := os.Rename(path, aside); rerr != nil {
			return fmt.Errorf("phi: %w (and it cannot be moved aside: %v)", err, rerr)
		}
		if st, err = observe.Open(path, nil); err != nil {
			return err
		}
	}
	p.coverage = st
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(observeFlushInterval)
		defer t.Stop()
		for {
			select {
			case <-p.bg.Done():
				return
			case <-t.C:
				p.flushCoverage()
			}
		}
	}()
	return nil
}

// flushCoverage writes the coverage store if it changed.
func (p *Proxy) flushCoverage() {
	if p.coverage == nil {
		return
	}
	if err := p.coverage.Flush(); err != nil {
		p.log.Error("observe: coverage records not written", "path", p.coverage.Path(), "err", err)
	}
}

// FlushCoverage writes the coverage records of observe mode to
// state_dir now (tests, and before a report of a running instance).
func (p *Proxy) FlushCoverage() { p.flushCoverage() }

// watchText plans sql as enforcement would if the observed columns were
// encrypted, and returns the verdict for each of its statements that
// touches an observed column (client goroutine).
func (s *session) watchText(snap *snapshot, sql string, sess rewrite.Session) []observe.Record {
	if snap.watch == nil || s.p.coverage == nil {
		return nil
	}
	plan, err := snap.watch.Plan(sql, sess)
	if err != nil {
		pe := asRefusal(err)
		st := snap.watch.Refused(sql)
		cols := refusedColumns(snap, st, pe.Message)
		if len(cols) == 0 {
			return nil
		}
		return []observe.Record{{
			// The whole text's: without the trailing semicolon psql sends.
			Fingerprint: st.Fingerprint(), Query: strings.TrimRight(strings.TrimSpace(st.Normalized()), "; \t\n"), Action: string(st.Action), Relations: st.Relations,
			Columns: cols, Verdict: observe.Refused, SQLSTATE: pe.Code.String(), Message: pe.Message, Hint: pe.Hint,
		}}
	}
	var out []observe.Record
	for _, st := range plan.Statements {
		if !st.TouchesPHI {
			continue
		}
		var cols []string
		for _, c := range st.Columns {
			if snap.observed[c] {
				cols = append(cols, c)
			}
		}
		if len(cols) == 0 {
			continue
		}
		r := observe.Record{
			Fingerprint: st.Fingerprint(), Query: st.Normalized(), Action: string(st.Action), Relations: st.Relations,
			Columns: cols, Verdict: observe.Works,
		}
		for _, sl := range st.Slots {
			r.Literals = append(r.Literals, sl.Column.Ident)
		}
		for _, pr := range st.Params {
			r.Params = append(r.Params, fmt.Sprintf("$%d %s", pr.Number, pr.Column.Ident))
		}
		for _, rs := range st.Results {
			r.Results = append(r.Results, fmt.Sprintf("#%d %s", rs.Position+1, rs.Column.Ident))
		}
		out = append(out, r)
	}
	return out
}

// refusedColumns are the observed columns a refused text is about: those
// of the relations it names that the refusal names, else those whose
// name the text uses, else all of them.
func refusedColumns(snap *snapshot, st *rewrite.Statement, msg string) []string {
	var cand []config.Column
	for _, rel := range st.Relations {
		for _, c := range snap.cfg.PHI[rel] {
			if snap.observed[c.Ident()] {
				cand = append(cand, c)
			}
		}
	}
	pick := func(in func(config.Column) bool) []string {
		var out []string
		for _, c := range cand {
			if in(c) {
				out = append(out, c.Ident())
			}
		}
		slices.Sort(out)
		return out
	}
	if out := pick(func(c config.Column) bool { return mentions(msg, c.Name) }); len(out) > 0 {
		return out
	}
	q := st.Normalized()
	if out := pick(func(c config.Column) bool { return mentions(q, c.Name) }); len(out) > 0 {
		return out
	}
	return pick(func(config.Column) bool { return true })
}

// mentions says text has name as a word (letters, digits, _ and $ around
// it are not a boundary), case-insensitively.
func mentions(text, name string) bool {
	return config.ContainsWord(strings.ToLower(text), strings.ToLower(name))
}

// cover counts the verdicts of one execution of a text; a fingerprint
// seen for the first time (or whose verdict changed) is also an audit
// event of action observe.
func (s *session) cover(recs []observe.Record) {
	for _, r := range recs {
		if s.p.coverage.Add(r, s.info.ApplicationName, s.info.User) {
			s.p.auditObserve(s, r)
		}
	}
}

// auditObserve writes r as an audit event of action observe: names and
// normalized text, no value.
func (p *Proxy) auditObserve(s *session, r observe.Record) {
	if p.auditor == nil {
		return
	}
	info := s.info
	ev := &audit.Event{
		Session: info.ID, DBUser: info.User, Roles: info.Roles, Application: info.ApplicationName, Database: info.Database, TLS: info.TLS,
		Action: audit.ActionObserve, Relations: r.Relations, Columns: r.Columns, Decision: audit.DecisionAllowed,
		Fingerprint: r.Fingerprint, Query: r.Query, Reason: "observe: would work",
	}
	if info.ClientAddr != nil {
		ev.Client = info.ClientAddr.String()
	}
	if r.Verdict == observe.Refused {
		ev.Reason = bound("observe: would be refused with "+r.SQLSTATE+": "+r.Message, 300)
	}
	_, _ = p.auditor.trail.Record(context.Background(), ev, false)
}

package phi

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Auditor writes the audit trail of PHI statements (DESIGN §8;
// docs/audit.md). As an Observer it records an event before the first row
// of an execution is released — in strict mode it waits until the event
// is durable, so no plaintext row leaves before its event is on disk — and
// the outcome at End: in the event itself when it was not written yet,
// else in a completion record naming its seq. An execution that releases
// no row (a write, a refusal, an empty result) is one event with its
// outcome. As an Admitter it refuses every PHI statement with 58030 while
// the trail cannot be written (strict mode) or while a gate (the Kafka
// export's backlog) says so.
type Auditor struct {
	trail *audit.Trail
	tags  map[string]bool
	gates []func() error
}

// NewAuditor records into trail, keeping the sqlcommenter tags whose keys
// are in contextTags (audit.context_tags); each gate is asked before a PHI
// statement is sent.
func NewAuditor(trail *audit.Trail, contextTags []string, gates ...func() error) *Auditor {
	a := &Auditor{trail: trail, tags: map[string]bool{}, gates: gates}
	for _, k := range contextTags {
		a.tags[k] = true
	}
	return a
}

// Admit implements Admitter.
func (a *Auditor) Admit(*proxy.SessionInfo, *rewrite.Statement) error {
	if err := a.trail.Admit(); err != nil {
		return err
	}
	for _, g := range a.gates {
		if err := g(); err != nil {
			return err
		}
	}
	return nil
}

// Announce implements Announcer: the event of an execution that may
// release rows is handed to the writer before the statement is sent, so
// its fsync overlaps the server's work; Start then waits for it.
func (a *Auditor) Announce(ex *Execution) {
	ex.audit, ex.auditErr = a.trail.Record(ex.Session.Context(), a.event(ex), a.trail.Mode() == audit.ModeStrict)
}

// Start implements Observer.
func (a *Auditor) Start(ex *Execution) error {
	ctx := ex.Session.Context()
	strict := a.trail.Mode() == audit.ModeStrict
	if ex.auditErr != nil {
		return ex.auditErr
	}
	if ex.audit == nil {
		rec, err := a.trail.Record(ctx, a.event(ex), strict)
		if err != nil {
			return err
		}
		ex.audit = rec
	}
	if strict {
		return ex.audit.Wait(ctx)
	}
	return nil
}

// End implements Observer.
func (a *Auditor) End(ex *Execution) {
	rows := ex.Rows
	if ex.audit != nil {
		reason := ""
		switch {
		case ex.Skipped:
			reason, rows = "not run: an earlier statement of its batch failed", 0
		case ex.Withdrawn:
			reason, rows = "withdrawn: it ran under another identity; the next event of the session stands for it", 0
		case ex.Ended:
			reason = "the session ended before the statement completed; outcome unknown"
		}
		a.trail.Complete(ex.Session.Context(), ex.audit, rows, ex.SQLSTATE, reason)
		return
	}
	if ex.auditErr != nil && !ex.Refused && ex.SQLSTATE == "" {
		ex.SQLSTATE = "58030"
	}
	ev := a.event(ex)
	ev.Rows, ev.Error = &rows, ex.SQLSTATE
	// Nobody waits: no row of it is released (the statement's own
	// refusal, a write whose result is a tag). The queue is bounded: in
	// strict mode a full one slows this session down.
	_, _ = a.trail.Record(ex.Session.Context(), ev, false)
}

// SessionEnd implements SessionObserver: an automatic logoff (idle
// session or idle-in-transaction timeout) is an event of the session.
func (a *Auditor) SessionEnd(s *proxy.SessionInfo, err error) {
	pe := pgerr.As(err)
	if pe == nil || (pe.Code != pgerr.IdleSessionTimeout && pe.Code != pgerr.IdleInTransactionTimeout) {
		return
	}
	ev := &audit.Event{
		Session: s.ID, DBUser: s.User, Roles: s.Roles, Application: s.ApplicationName, Database: s.Database, TLS: s.TLS,
		Action: audit.ActionLogoff, Error: pe.Code.String(), Reason: "automatic logoff: " + pe.Message,
	}
	if s.ClientAddr != nil {
		ev.Client = s.ClientAddr.String()
	}
	id := s.Identity()
	ev.EndUser = id.EndUser
	if id.Role != "" && id.Role != s.User {
		ev.Role = id.Role
	}
	_, _ = a.trail.Record(context.Background(), ev, false)
}

// CancelRequest records a client's CancelRequest (proxy.WithCancelHook):
// forwarded, or with a key that named no session (a guess, or a session
// already gone).
func (a *Auditor) CancelRequest(client net.Addr, forwarded bool) {
	ev := &audit.Event{Action: audit.ActionCancel, Decision: audit.DecisionAllowed, Detail: "forwarded to the session's server"}
	if !forwarded {
		ev.Decision, ev.Detail = audit.DecisionDenied, "its key named no session: nothing cancelled"
	}
	if client != nil {
		ev.Client = client.String()
	}
	_, _ = a.trail.Record(context.Background(), ev, false)
}

// event builds ex's event: names, never values.
func (a *Auditor) event(ex *Execution) *audit.Event {
	s := ex.Session
	ev := &audit.Event{
		Session: s.ID, DBUser: s.User, Roles: s.Roles, EndUser: ex.Identity.EndUser,
		Application: s.ApplicationName, Database: s.Database, TLS: s.TLS,
		Decision: audit.DecisionAllowed, Protocol: "simple",
	}
	if s.ClientAddr != nil {
		ev.Client = s.ClientAddr.String()
	}
	if ex.Identity.Role != "" && ex.Identity.Role != s.User {
		ev.Role = ex.Identity.Role
	}
	if ex.Extended {
		ev.Protocol = "extended"
	}
	if st := ex.Statement; st != nil {
		ev.Action = string(st.Action)
		ev.Relations, ev.Columns = st.Relations, st.Columns
		ev.Query, ev.Fingerprint = st.Normalized(), st.Fingerprint()
	}
	if ev.Action == "" {
		ev.Action = audit.ActionDenied
	}
	if ex.Decision != "" {
		ev.Decision, ev.Reason, ev.BreakGlass = ex.Decision, ex.Reason, ex.BreakGlass
	}
	switch {
	case ex.Refused:
		ev.Decision, ev.Reason = audit.DecisionDenied, "refused by phiproxy: "+bound(ex.Why, 300)
	case ex.Ended:
		ev.Reason = "the session ended before the statement completed; outcome unknown"
	}
	for _, t := range ex.Tags {
		if a.tags[t.Key] {
			if ev.Context == nil {
				ev.Context = map[string]string{}
			}
			ev.Context[t.Key] = bound(t.Value, config.MaxContextTagBytes)
		}
	}
	return ev
}

// bound cuts s to at most n bytes on a rune boundary.
func bound(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Record writes one of the trail's own events (config_loaded,
// key_rotated, lockdown) for the proxy as a whole.
func (a *Auditor) Record(action, detail string) error {
	_, err := a.trail.Record(context.Background(), &audit.Event{Action: action, Detail: detail}, false)
	return err
}

// Observers fans the lifecycle out to several Observers, in order: Start
// stops at the first error (every Observer still gets End); an
// Admitter or SessionObserver among them is asked as such.
func Observers(obs ...Observer) Observer {
	var out fanout
	for _, o := range obs {
		if o != nil {
			out = append(out, o)
		}
	}
	if len(out) == 1 {
		return out[0]
	}
	return out
}

type fanout []Observer

func (f fanout) Start(ex *Execution) error {
	for _, o := range f {
		if err := o.Start(ex); err != nil {
			return err
		}
	}
	return nil
}

func (f fanout) End(ex *Execution) {
	for _, o := range f {
		o.End(ex)
	}
}

func (f fanout) ObservePlan(d time.Duration) {
	for _, o := range f {
		if t, ok := o.(Timer); ok {
			t.ObservePlan(d)
		}
	}
}

func (f fanout) ObserveCrypto(op CryptoOp, d time.Duration) {
	for _, o := range f {
		if t, ok := o.(Timer); ok {
			t.ObserveCrypto(op, d)
		}
	}
}

func (f fanout) Announce(ex *Execution) {
	for _, o := range f {
		if a, ok := o.(Announcer); ok {
			a.Announce(ex)
		}
	}
}

func (f fanout) Admit(si *proxy.SessionInfo, st *rewrite.Statement) error {
	for _, o := range f {
		if a, ok := o.(Admitter); ok {
			if err := a.Admit(si, st); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f fanout) SessionEnd(si *proxy.SessionInfo, err error) {
	for _, o := range f {
		if so, ok := o.(SessionObserver); ok {
			so.SessionEnd(si, err)
		}
	}
}

// auditSetup is what WithAudit configures.
type auditSetup struct {
	cfg      config.Audit
	headFile string
	version  string
	fault    func(op string) error
}

// WithAudit writes the audit trail cfg describes (unless its mode is off)
// once the keyring is open (its audit-signing keyset signs checkpoints);
// headFile is state_dir/audit-head.json. Without PHI columns there is no
// trail: nothing is audited.
func WithAudit(cfg config.Audit, headFile, version string) Option {
	return func(p *Proxy) { p.auditCfg = &auditSetup{cfg: cfg, headFile: headFile, version: version} }
}

// WithAuditFault installs the trail's test hook (audit.Options.Fault).
func WithAuditFault(f func(op string) error) Option {
	return func(p *Proxy) {
		if p.auditCfg != nil {
			p.auditCfg.fault = f
		}
	}
}

// openAudit opens the trail (New, after the keyring).
func (p *Proxy) openAudit() error {
	a := p.auditCfg
	if a == nil || a.cfg.Mode == config.AuditOff {
		return nil
	}
	signer, err := p.keys.Signer()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	trail, err := audit.Open(audit.Options{
		Dir: a.cfg.File.Dir, Instance: a.cfg.Instance, Mode: a.cfg.Mode,
		CheckpointEvery: a.cfg.File.CheckpointEvery, CheckpointInterval: a.cfg.File.CheckpointInterval,
		MaxFileBytes: a.cfg.File.MaxFileBytes, Signer: signer, HeadFile: a.headFile,
		Logger: p.log, Version: a.version, Fault: a.fault,
	})
	if err != nil {
		return err
	}
	p.auditor = NewAuditor(trail, a.cfg.ContextTags)
	p.obs = Observers(p.auditor, p.obs)
	return nil
}

// Auditor is the audit trail's Observer, nil when nothing is audited (no
// PHI columns, or audit.mode off).
func (p *Proxy) Auditor() *Auditor { return p.auditor }

// Trail is the Auditor's trail.
func (a *Auditor) Trail() *audit.Trail { return a.trail }

// AddGate adds a check asked before each PHI statement (the Kafka
// export's backlog). Call it before the proxy serves.
func (a *Auditor) AddGate(g func() error) { a.gates = append(a.gates, g) }

// keyPrimaries are the primary key ids of the loaded keysets.
func keyPrimaries(k *crypto.Keyring) map[string]uint32 {
	out := map[string]uint32{}
	for _, n := range k.KeyNames() {
		if c, err := k.Cipher(n); err == nil {
			out[n] = c.PrimaryKeyID()
		}
	}
	return out
}

// auditReload records a reload: config_loaded, and key_rotated for each
// keyset whose primary key changed (a `phiproxy keys rotate` the reload
// picked up).
func (p *Proxy) auditReload(cfg *config.Config, before map[string]uint32) {
	if p.auditor == nil {
		return
	}
	after := keyPrimaries(p.keys)
	for _, n := range slices.Sorted(maps.Keys(after)) {
		if old, ok := before[n]; ok && old != after[n] {
			_ = p.auditor.Record(audit.ActionKeyRotated, fmt.Sprintf("key %s: primary key id %d (was %d)", n, after[n], old))
		}
	}
	_ = p.auditor.Record(audit.ActionConfigLoaded, cfg.Path)
}

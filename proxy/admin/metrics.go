package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/proxy/phi"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Metrics holds phiproxy's Prometheus metrics on a registry of its own.
// It is a phi.SessionObserver (install it with phi.WithObserver) and
// counts sessions through SessionHook (proxy.WithSessionHook). Safe for
// concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	sessionsActive [2]prometheus.Gauge   // by tls false, true
	sessionsTotal  [2]prometheus.Counter // by tls false, true
	// statements by action, then outcome, resolved up front: End does no
	// label lookup and allocates nothing.
	statements [len(actions)][len(outcomes)]prometheus.Counter
	refusals   *prometheus.CounterVec
	// refusalCodes are the refusals' counters of the fixed SQLSTATE set.
	refusalCodes map[string]prometheus.Counter
	reloads      *prometheus.CounterVec
	// decisions are the policy's, by decision (allowed, masked,
	// denied); breakGlass counts executions served through break-glass.
	decisions  [3]prometheus.Counter
	breakGlass prometheus.Counter
	// plan and crypto are the PHI path's latency histograms.
	plan   prometheus.Histogram
	crypto [2]prometheus.Histogram // by phi.CryptoOp
}

// latencyBuckets run from 1 µs to about 260 ms, ×4 each.
var latencyBuckets = prometheus.ExponentialBuckets(1e-6, 4, 10)

// ObservePlan implements phi.Timer.
func (m *Metrics) ObservePlan(d time.Duration) { m.plan.Observe(d.Seconds()) }

// ObserveCrypto implements phi.Timer.
func (m *Metrics) ObserveCrypto(op phi.CryptoOp, d time.Duration) {
	if int(op) < len(m.crypto) {
		m.crypto[op].Observe(d.Seconds())
	}
}

// actions are the statement label values: rewrite.Action's, "other"
// for a statement without one and a refusal of text that did not plan.
var actions = [...]rewrite.Action{rewrite.ActionRead, rewrite.ActionWrite, rewrite.ActionDelete, rewrite.ActionCopyIn, rewrite.ActionCopyOut, "other"}

// outcomes are an execution's: completed, failed (the server's error or
// phiproxy's in the middle of it), refused by phiproxy, or cut by the
// session's end.
var outcomes = [...]string{"ok", "error", "refused", "ended"}

// refusalCodes are the SQLSTATEs phiproxy refuses statements with; a
// refusal with any other code is counted under its class (first two
// characters and "000"), so the label stays within a fixed set.
var refusalCodes = []pgerr.Code{
	pgerr.FeatureNotSupported, pgerr.InsufficientPrivilege, pgerr.Internal, pgerr.DataCorrupted,
	pgerr.UndefinedTable, pgerr.UndefinedColumn, pgerr.UndefinedFunction, pgerr.UndefinedObject,
	pgerr.SyntaxError, pgerr.AmbiguousColumn, pgerr.DatatypeMismatch, pgerr.WrongObjectType,
	pgerr.IndeterminateDatatype, pgerr.InvalidParameterValue, pgerr.InvalidTextRepresentation,
	pgerr.InvalidBinaryRepresentation, pgerr.StatementTooComplex, pgerr.ProgramLimitExceeded,
	pgerr.InFailedSQLTransaction, pgerr.InvalidSQLStatementName, pgerr.InvalidCursorName,
	pgerr.ObjectNotInPrerequisiteState, pgerr.ProtocolViolation, pgerr.IOError,
}

// NewMetrics returns the metrics; status (phi.Proxy.Status) is read at
// each scrape for the catalog, keys and plan-cache series, nil for none.
func NewMetrics(status func() phi.Status) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), refusalCodes: map[string]prometheus.Counter{}}
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "phiproxy_sessions_active", Help: "Client sessions logged in now, by whether the client leg is TLS.",
	}, []string{"tls"})
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phiproxy_sessions_total", Help: "Client sessions that logged in, by whether the client leg is TLS.",
	}, []string{"tls"})
	for i, tls := range []string{"false", "true"} {
		m.sessionsActive[i] = active.WithLabelValues(tls)
		m.sessionsTotal[i] = total.WithLabelValues(tls)
	}
	stmts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phiproxy_statements_total",
		Help: "Executions of statements that touch PHI and statements phiproxy refused, by audit action and outcome.",
	}, []string{"action", "outcome"})
	for i, a := range actions {
		for j, o := range outcomes {
			m.statements[i][j] = stmts.WithLabelValues(string(a), o)
		}
	}
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phiproxy_refusals_total",
		Help: "Statements phiproxy refused, by SQLSTATE (codes outside phiproxy's own set are counted under their class, XX000 style).",
	}, []string{"sqlstate"})
	for _, c := range refusalCodes {
		m.refusalCodes[c.String()] = m.refusals.WithLabelValues(c.String())
	}
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phiproxy_config_reloads_total", Help: "SIGHUP reloads, by result (ok, error: the old config was kept).",
	}, []string{"result"})
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	m.plan = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "phiproxy_plan_seconds", Help: "Time to plan a statement text on the PHI path (plan-cache hits included).", Buckets: latencyBuckets,
	})
	crypto := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "phiproxy_crypto_seconds", Help: "Time to encrypt (a Query's literals, a Bind's parameters, a COPY FROM chunk) or decrypt (a DataRow, a COPY TO chunk) the PHI values of one message.", Buckets: latencyBuckets,
	}, []string{"op"})
	m.crypto = [2]prometheus.Histogram{crypto.WithLabelValues("encrypt").(prometheus.Histogram), crypto.WithLabelValues("decrypt").(prometheus.Histogram)}
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phiproxy_decisions_total", Help: "Executions of PHI statements by the policy's decision: allowed (plaintext), masked, denied (refused by policy, lockdown or phiproxy).",
	}, []string{"decision"})
	for i, d := range []string{"allowed", "masked", "denied"} {
		m.decisions[i] = decisions.WithLabelValues(d)
	}
	m.breakGlass = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phiproxy_break_glass_statements_total", Help: "Executions that got plaintext only through a session's break-glass.",
	})
	m.reg.MustRegister(active, total, stmts, m.refusals, m.reloads, m.plan, crypto, decisions, m.breakGlass,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if status != nil {
		m.reg.MustRegister(newStatusCollector(status))
	}
	return m
}

// Registry is the registry the metrics are on (for /metrics).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SessionHook counts a logged-in session until it ends: install it with
// proxy.WithSessionHook.
func (m *Metrics) SessionHook(info *proxy.SessionInfo) func() {
	i := 0
	if info.TLS {
		i = 1
	}
	m.sessionsTotal[i].Inc()
	m.sessionsActive[i].Inc()
	return m.sessionsActive[i].Dec
}

// Start implements phi.Observer; metrics never hold an execution back.
func (m *Metrics) Start(*phi.Execution) error { return nil }

// End implements phi.Observer: one execution, or one refusal.
func (m *Metrics) End(ex *phi.Execution) {
	a := len(actions) - 1
	if st := ex.Statement; st != nil {
		for i, x := range actions[:len(actions)-1] {
			if st.Action == x {
				a = i
				break
			}
		}
	}
	o := 0
	switch {
	case ex.Refused:
		o = 2
		m.refusal(ex.SQLSTATE).Inc()
	case ex.Ended:
		o = 3
	case ex.SQLSTATE != "":
		o = 1
	}
	m.statements[a][o].Inc()
	d := 0 // allowed
	switch {
	case ex.Refused:
		d = 2
	case ex.Decision == "masked":
		d = 1
	}
	m.decisions[d].Inc()
	if ex.BreakGlass {
		m.breakGlass.Inc()
	}
}

// SessionEnd implements phi.SessionObserver (sessions are counted by
// SessionHook, pass-through ones too).
func (m *Metrics) SessionEnd(*proxy.SessionInfo, error) {}

// refusal is the counter for a refusal with SQLSTATE code: the code's
// own in the fixed set, else its class's.
func (m *Metrics) refusal(code string) prometheus.Counter {
	if c, ok := m.refusalCodes[code]; ok {
		return c
	}
	if len(code) == 5 && sqlstateChar(code[0]) && sqlstateChar(code[1]) {
		return m.refusals.WithLabelValues(code[:2] + "000")
	}
	return m.refusals.WithLabelValues("other")
}

func sqlstateChar(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' }

// Reloaded counts a SIGHUP reload and its result.
func (m *Metrics) Reloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("error").Inc()
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
}

// statusCollector reads phi.Proxy.Status once per scrape.
type statusCollector struct {
	status                                              func() phi.Status
	catalogVersion, catalogAge, keys, planCache, locked *prometheus.Desc
}

func newStatusCollector(status func() phi.Status) *statusCollector {
	return &statusCollector{
		status:         status,
		catalogVersion: prometheus.NewDesc("phiproxy_catalog_version", "Version of the catalog snapshot in use (moves on at each snapshot phiproxy builds).", nil, nil),
		catalogAge:     prometheus.NewDesc("phiproxy_catalog_age_seconds", "Seconds since the catalog was last read successfully.", nil, nil),
		keys:           prometheus.NewDesc("phiproxy_keys_loaded", "1 when the column keys are loaded (PHI configured), else 0.", nil, nil),
		locked:         prometheus.NewDesc("phiproxy_lockdown", "1 while lockdown is on (no plaintext PHI served), else 0.", nil, nil),
		planCache:      prometheus.NewDesc("phiproxy_plan_cache_lookups_total", "Plan-cache lookups, by tier (text: the exact statement text; shape: its literal shape, looked up on a text miss for text that names PHI) and result.", []string{"tier", "result"}, nil),
	}
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.catalogVersion
	ch <- c.catalogAge
	ch <- c.keys
	ch <- c.planCache
	ch <- c.locked
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	keys := 0.0
	if st.KeysLoaded {
		keys = 1
	}
	ch <- prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, keys)
	locked := 0.0
	if st.Locked {
		locked = 1
	}
	ch <- prometheus.MustNewConstMetric(c.locked, prometheus.GaugeValue, locked)
	if !st.PHI {
		return // pure pass-through: no catalog snapshot, no planner
	}
	ch <- prometheus.MustNewConstMetric(c.catalogVersion, prometheus.GaugeValue, float64(st.CatalogVersion))
	if !st.CatalogRead.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.catalogAge, prometheus.GaugeValue, time.Since(st.CatalogRead).Seconds())
	}
	pc := st.PlanCache
	for _, s := range []struct {
		tier, result string
		n            uint64
	}{{"text", "hit", pc.Hits}, {"text", "miss", pc.Misses}, {"shape", "hit", pc.ShapeHits}, {"shape", "miss", pc.ShapeMisses}} {
		ch <- prometheus.MustNewConstMetric(c.planCache, prometheus.CounterValue, float64(s.n), s.tier, s.result)
	}
}

// WatchAudit adds the audit trail's series, read from stats at each
// scrape: events written, batches (one write and fsync each), time in
// fsync (its rate over the batches' rate is the mean fsync latency),
// the longest fsync and batch, events lost (best_effort), write
// failures, the queue's depth and whether the sink writes now.
func (m *Metrics) WatchAudit(stats func() audit.Stats, up func() bool) {
	r := statsSeries[audit.Stats]{m.reg, stats}
	counter, gauge := r.counter, r.gauge
	counter("phiproxy_audit_events_total", "Audit events made durable (checkpoints aside).", func(s audit.Stats) float64 { return float64(s.Events) })
	counter("phiproxy_audit_batches_total", "Group commits: one write and one fsync each.", func(s audit.Stats) float64 { return float64(s.Batches) })
	counter("phiproxy_audit_fsync_seconds_total", "Time spent in fsync of the audit file.", func(s audit.Stats) float64 { return float64(s.SyncNanos) / 1e9 })
	gauge("phiproxy_audit_fsync_max_seconds", "The longest fsync of the audit file since start.", func(s audit.Stats) float64 { return float64(s.MaxSyncNanos) / 1e9 })
	gauge("phiproxy_audit_batch_max_events", "The largest group commit since start, in events.", func(s audit.Stats) float64 { return float64(s.MaxBatch) })
	counter("phiproxy_audit_lost_events_total", "Audit events lost (best_effort mode only; strict mode refuses PHI instead).", func(s audit.Stats) float64 { return float64(s.Lost) })
	counter("phiproxy_audit_write_failures_total", "Failed audit writes (each refused the PHI statements waiting on it).", func(s audit.Stats) float64 { return float64(s.Failures) })
	gauge("phiproxy_audit_queue_events", "Audit events waiting for the writer.", func(s audit.Stats) float64 { return float64(s.Queue) })
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "phiproxy_audit_sink_up", Help: "1 while the audit trail can be written, 0 while it fails."}, func() float64 {
		if up() {
			return 1
		}
		return 0
	}))
}

// statsSeries registers series computed from one snapshot of S, read at
// each scrape.
type statsSeries[S any] struct {
	reg   *prometheus.Registry
	stats func() S
}

func (r statsSeries[S]) counter(name, help string, f func(S) float64) {
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(r.stats()) }))
}

func (r statsSeries[S]) gauge(name, help string, f func(S) float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(r.stats()) }))
}

// WatchKafka adds the Kafka export's series, read at each scrape: the
// backlog (durable events not acknowledged by the brokers), the last seq
// acknowledged, records sent, failed batches, and whether a batch has
// waited for the brokers longer than 10 s.
func (m *Metrics) WatchKafka(stats func() audit.ExportStats) {
	r := statsSeries[audit.ExportStats]{m.reg, stats}
	counter, gauge := r.counter, r.gauge
	gauge("phiproxy_audit_kafka_backlog_events", "Durable audit events not yet acknowledged by Kafka (past audit.kafka.max_backlog PHI is refused).", func(s audit.ExportStats) float64 { return float64(s.Backlog) })
	gauge("phiproxy_audit_kafka_exported_seq", "The last audit seq Kafka acknowledged.", func(s audit.ExportStats) float64 { return float64(s.Exported) })
	gauge("phiproxy_audit_kafka_stalled", "1 while a batch has waited for Kafka's acknowledgement longer than 10 s.", func(s audit.ExportStats) float64 {
		if s.Stalled {
			return 1
		}
		return 0
	})
	counter("phiproxy_audit_kafka_records_total", "Audit records Kafka acknowledged.", func(s audit.ExportStats) float64 { return float64(s.Records) })
	counter("phiproxy_audit_kafka_failures_total", "Batches to Kafka that failed and were sent again.", func(s audit.ExportStats) float64 { return float64(s.Failures) })
}

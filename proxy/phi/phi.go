package phi

import (
	"context"
	"errors"
	"fmt"
	"github.com/phiproxy/phiproxy/policy"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/observe"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Proxy is the long-lived PHI layer of one phiproxy instance: the
// keyring, the catalog snapshot, the rewrite planner and its plan cache.
// Sessions read the current snapshot with one atomic load per statement;
// Reload and catalog refreshes build a new snapshot and swap it in.
type Proxy struct {
	log     *slog.Logger
	cryptoO crypto.Options
	keys    *crypto.Keyring
	cache   *rewrite.Cache

	cur atomic.Pointer[snapshot]
	// mu serializes Reload and catalog refreshes (never taken by sessions).
	mu         sync.Mutex
	version    atomic.Uint64
	refreshing atomic.Bool
	pending    atomic.Bool
	// refreshWant counts catalog refresh requests; refreshDone is the
	// count the last finished refresh covers; refreshed is closed (and
	// replaced) when a refresh finishes.
	refreshWant atomic.Uint64
	refreshDone atomic.Uint64
	refreshMu   sync.Mutex
	refreshed   chan struct{}
	// bg bounds the asynchronous catalog refreshes; Close cancels it.
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// pool holds the catalog connections of snapshot loads, for the
	// catalog_dsn poolDSN (guarded by mu once New returns).
	pool    *pgxpool.Pool
	poolDSN string

	// obs sees the statement lifecycle (observe.go); nil: nothing does.
	obs Observer
	// sessions are the live sessions (*session), for refreshRoles.
	sessions sync.Map
	// now is the policy's clock (WithClock; nil: time.Now).
	now func() time.Time
	// lock is the lockdown switch (lockdown.go); lockMu orders its
	// changes, lockWake wakes its watcher.
	lock     atomic.Pointer[lockState]
	lockMu   sync.Mutex
	lockWake chan struct{}
	// auditCfg is WithAudit's; auditor writes the trail (audit.go).
	auditCfg *auditSetup
	auditor  *Auditor
	// epoch is the decision epoch: result transforms built under an
	// older one are rebuilt before their next row (BumpDecisionEpoch).
	epoch atomic.Uint64
	// catalogRead is when a catalog snapshot was last read (Unix ns).
	catalogRead atomic.Int64
	// coverage keeps observe mode's records (coverage.go); watchCache
	// is the plan cache of the snapshots' watch planners.
	coverage   *observe.Store
	watchCache *rewrite.Cache
}

// snapshot is everything derived from one config and one catalog.
type snapshot struct {
	cfg     *config.Config
	cat     *config.Catalog
	planner *rewrite.Planner
	// cols is the PHI column map by "schema.table.column"; policies their
	// policies (pointers: a decision copies nothing).
	cols     map[string]config.Column
	policies map[string]*policy.Column
	// database is the catalog's database: the one the PHI map is about.
	database string
	// overlay is the database whose catalog overlay the planner uses, ""
	// for none.
	overlay string
	// watch plans with every configured column as PHI, observed
	// included; observed holds the observed columns' identities. Both nil
	// without observed columns (coverage.go).
	watch    *rewrite.Planner
	observed map[string]bool
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithLogger sets the logger (default slog.Default()). Nothing logged holds
// SQL text, parameters or values.
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.log = l } }

// WithCryptoOptions passes options to crypto.Open (environment for Vault,
// clock).
func WithCryptoOptions(o crypto.Options) Option { return func(p *Proxy) { p.cryptoO = o } }

// PlanCacheSize is the number of plans cached per instance.
const PlanCacheSize = 4096

// New opens the keyring of cfg, loads the catalog over cfg.CatalogDSN and
// checks every configured PHI column against it (missing or not bytea is an
// error naming the config line). With no PHI columns configured it returns
// a Proxy whose Factory is nil: sessions are pure pass-through.
func New(ctx context.Context, cfg *config.Config, opts ...Option) (*Proxy, error) {
	p := &Proxy{log: slog.Default(), cryptoO: crypto.Options{Env: crypto.EnvFromOS()}, cache: rewrite.NewCache(PlanCacheSize), watchCache: rewrite.NewCache(PlanCacheSize), lockWake: make(chan struct{}, 1)}
	for _, o := range opts {
		o(p)
	}
	p.bg, p.cancel = context.WithCancel(context.Background())
	if len(cfg.PHI) == 0 {
		p.cur.Store(&snapshot{cfg: cfg})
		return p, nil
	}
	// The schema first: a configured column missing in the database is
	// the clearer error.
	s, err := p.load(ctx, cfg)
	if err != nil {
		p.Close()
		return nil, err
	}
	keys, err := crypto.Open(ctx, cfg, p.cryptoO)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("phi: keys: %w", err)
	}
	p.keys = keys
	if err := p.openAudit(); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.openCoverage(cfg); err != nil {
		p.Close()
		return nil, err
	}
	p.cur.Store(s)
	if err := p.refreshLockdown(ctx, "start"); err != nil {
		p.log.Warn("lockdown state not read from the database at start; state_dir's applies", "err", err)
	}
	p.wg.Add(2)
	go p.watchCatalog()
	go p.watchLockdown()
	return p, nil
}

// BumpDecisionEpoch invalidates every decision cached across statements:
// the result transforms of cached plans (per prepared statement and
// result formats, per Query plan) and those of portals already bound.
// Each is rebuilt — with the ciphers, and later the policy, in force —
// before it decrypts another row, so an open portal cannot keep
// decrypting under a decision that no longer holds. A policy reload or a
// lockdown calls it. Safe for concurrent use; it returns the new epoch.
func (p *Proxy) BumpDecisionEpoch() uint64 { return p.epoch.Add(1) }

// DecisionEpoch is the current decision epoch (see Execution.Epoch).
func (p *Proxy) DecisionEpoch() uint64 { return p.epoch.Load() }

// Close stops background catalog refreshes and closes the catalog
// connections.
func (p *Proxy) Close() {
	p.cancel()
	p.wg.Wait()
	p.flushCoverage()
	if p.auditor != nil {
		if err := p.auditor.trail.Close(); err != nil {
			p.log.Error("audit trail not closed cleanly", "err", err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pool != nil {
		p.pool.Close()
		p.pool = nil
	}
}

// catalogConn hands out a catalog connection for dsn from the pool
// (proxy.NewCatalogPool: checked before use, so a restarted server is
// reconnected), replacing the pool when a reload changed catalog_dsn.
// The caller holds mu, or is New.
func (p *Proxy) catalogConn(ctx context.Context, dsn string) (*pgxpool.Conn, error) {
	if p.pool == nil || p.poolDSN != dsn {
		pool, err := proxy.NewCatalogPool(dsn)
		if err != nil {
			return nil, err
		}
		if p.pool != nil {
			p.pool.Close()
		}
		p.pool, p.poolDSN = pool, dsn
	}
	return p.pool.Acquire(ctx)
}

// Factory returns the per-session Interceptor factory for
// proxy.WithInterceptor, or nil when no PHI column is configured (then
// sessions relay bytes without decoding anything). Sessions built by the
// factory follow later reloads: they read the current snapshot per
// statement. Sessions on a database other than catalog_dsn's get no
// Interceptor: the PHI map is about the catalog's database only.
func (p *Proxy) Factory() func(*proxy.SessionInfo) proxy.Interceptor {
	if len(p.cur.Load().cfg.PHI) == 0 {
		return nil
	}
	return func(info *proxy.SessionInfo) proxy.Interceptor {
		// The PHI map describes the catalog's database: a session on
		// another database of the cluster is passed through untouched
		// (its own "patients" is not the configured one).
		if db := p.cur.Load().database; info.Database != db {
			p.log.Debug("session on a database other than catalog_dsn's: passed through without PHI handling", "database", info.Database, "catalog_database", db)
			return nil
		}
		return newSession(p, info) // package proxy runs it under recover
	}
}

// Reload swaps in cfg (a newly loaded config), its keys and a fresh catalog
// snapshot, atomically: on any error nothing changes. Call it on SIGHUP.
// A successful reload moves the decision epoch on (BumpDecisionEpoch):
// the columns' access and keys may have changed.
// A config that turns PHI on or off needs a restart (the Factory was
// chosen at startup); Reload refuses that change.
func (p *Proxy) Reload(ctx context.Context, cfg *config.Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.cur.Load()
	if (len(cfg.PHI) == 0) != (len(old.cfg.PHI) == 0) {
		return errors.New("phi: turning PHI columns on or off needs a restart")
	}
	if len(cfg.PHI) == 0 {
		p.cur.Store(&snapshot{cfg: cfg})
		return nil
	}
	s, err := p.load(ctx, cfg)
	if err != nil {
		return err
	}
	// Keys last: if they fail, the old snapshot (and keys) stay.
	before := keyPrimaries(p.keys)
	if err := p.keys.Reload(ctx, cfg); err != nil {
		return fmt.Errorf("phi: keys: %w", err)
	}
	p.cur.Store(s)
	if err := p.refreshRoles(ctx, cfg.CatalogDSN); err != nil {
		p.log.Warn("role memberships not refreshed at reload; sessions keep their login's", "err", err)
	}
	p.BumpDecisionEpoch()
	p.auditReload(cfg, before)
	return nil
}

// RefreshCatalog reloads the catalog snapshot with the current config.
func (p *Proxy) RefreshCatalog(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.cur.Load()
	if len(old.cfg.PHI) == 0 {
		return nil
	}
	s, err := p.load(ctx, old.cfg)
	if err != nil {
		return err
	}
	// Nothing changed (the periodic refresh, DDL on unrelated objects):
	// keep the snapshot, and with it the plans cached against it.
	if s.database == old.database && s.overlay == old.overlay && s.cat.Same(old.cat) {
		return nil
	}
	p.cur.Store(s)
	return nil
}

// catalogChanged asks for an asynchronous catalog refresh: after DDL went
// through, on a notification, periodically (notify.go). Concurrent requests collapse into at most one more refresh.
func (p *Proxy) catalogChanged() {
	p.refreshWant.Add(1)
	p.pending.Store(true)
	if !p.refreshing.CompareAndSwap(false, true) {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.refreshing.Store(false)
		for p.pending.Swap(false) {
			want := p.refreshWant.Load()
			ctx, cancel := context.WithTimeout(p.bg, 30*time.Second)
			err := p.RefreshCatalog(ctx)
			cancel()
			if err != nil {
				// A refresh that fails keeps the old snapshot; sessions
				// waiting for it (awaitCatalog) refuse what names PHI.
				p.log.Warn("catalog refresh failed; the previous snapshot stays in use", "err", err)
			} else {
				p.refreshDone.Store(want)
			}
			p.refreshMu.Lock()
			if p.refreshed != nil {
				close(p.refreshed)
				p.refreshed = nil
			}
			p.refreshMu.Unlock()
		}
	}()
}

// refreshedCh is closed when the next catalog refresh finishes.
func (p *Proxy) refreshedCh() <-chan struct{} {
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
	if p.refreshed == nil {
		p.refreshed = make(chan struct{})
	}
	return p.refreshed
}

// load builds a snapshot for cfg: catalog over catalog_dsn, Check, planner.
func (p *Proxy) load(ctx context.Context, cfg *config.Config) (*snapshot, error) {
	pc, err := p.catalogConn(ctx, cfg.CatalogDSN)
	if err != nil {
		return nil, fmt.Errorf("phi: catalog connection: %w", err)
	}
	defer pc.Release()
	conn := pc.Conn()
	ver := p.version.Add(1)
	cat, err := config.LoadCatalog(ctx, conn, cfg, ver)
	if err != nil {
		return nil, fmt.Errorf("phi: %w", err)
	}
	if err := cat.Check(cfg); err != nil {
		return nil, fmt.Errorf("phi: the config does not match the database:\n%w", err)
	}
	s := &snapshot{cfg: cfg, cat: cat, cols: map[string]config.Column{}, policies: map[string]*policy.Column{}, database: conn.Config().Database, observed: observedIdents(cfg)}
	var rcols, all []rewrite.Column
	for _, c := range cfg.Columns() {
		s.cols[c.Ident()] = c
		s.policies[c.Ident()] = &c.Policy
		rc := rewrite.Column{Schema: c.Schema, Table: c.Table, Name: c.Name, Type: c.Type, Mode: c.Mode, Key: c.Key}
		all = append(all, rc)
		if !c.Observed() {
			rcols = append(rcols, rc)
		}
	}
	cols, err := rewrite.NewColumns(rcols)
	if err != nil {
		return nil, fmt.Errorf("phi: %w", err)
	}
	if s.observed != nil {
		allCols, err := rewrite.NewColumns(all)
		if err != nil {
			return nil, fmt.Errorf("phi: %w", err)
		}
		s.watch = rewrite.NewPlanner(allCols, newCatalogAdapter(cat, cfg, s.observed, true), p.watchCache)
	}
	opts := []rewrite.PlannerOption{rewrite.WithMaxPHIText(cfg.Limits.MaxPHIStatementBytes)}
	p.syncCatalogTrigger(ctx, conn, cfg)
	if db, ok := p.syncOverlay(ctx, conn, cfg, cat); ok {
		s.overlay = db
		opts = append(opts, rewrite.WithCatalogOverlay(config.OverlaySchema, db))
	}
	s.planner = rewrite.NewPlanner(cols, newCatalogAdapter(cat, cfg, s.observed, false), p.cache, opts...)
	p.catalogRead.Store(time.Now().UnixNano())
	return s, nil
}

// catalogAdapter presents a config.Catalog as a rewrite.Catalog. It is
// built once per snapshot and immutable.
type catalogAdapter struct {
	ver  uint64
	rels map[string]*rewrite.Relation
	deps []rewrite.Dependent
}

// Observed columns are plaintext: for the planner that decides what runs
// (watch false) a view or function reading only them reads no PHI; for
// the watch planner they are the bytea they will become.
func newCatalogAdapter(cat *config.Catalog, cfg *config.Config, observed map[string]bool, watch bool) *catalogAdapter {
	a := &catalogAdapter{ver: cat.Version, rels: map[string]*rewrite.Relation{}}
	ident := func(ref config.ColumnRef) string {
		r, ok := cat.RelationByOID(ref.RelOID)
		if !ok {
			return ""
		}
		col, ok := r.ColumnByNum(ref.Num)
		if !ok {
			return ""
		}
		return r.Ident() + "." + col.Name
	}
	for _, r := range cat.Relations() {
		rr := &rewrite.Relation{OID: r.OID, Schema: r.Schema, Name: r.Name, Kind: rewrite.RelKind(r.Kind), Keys: r.Keys}
		for _, c := range r.Columns {
			typ := c.TypeName
			if watch && observed[r.Ident()+"."+c.Name] {
				typ = "bytea"
			}
			rr.Columns = append(rr.Columns, rewrite.Attr{Name: c.Name, Num: c.Num, Type: typ})
		}
		for _, d := range r.PHIDeps {
			if s := ident(d); s != "" && (watch || !observed[s]) {
				rr.PHIDeps = append(rr.PHIDeps, s)
			}
		}
		a.rels[r.Schema+"."+r.Name] = rr
		if len(rr.PHIDeps) > 0 {
			a.deps = append(a.deps, rewrite.Dependent{Kind: rewrite.DependentView, Schema: r.Schema, Name: r.Name, Reads: rr.PHIDeps})
		}
	}
	for _, f := range cat.Functions() {
		d := rewrite.Dependent{Kind: rewrite.DependentFunction, Schema: f.Schema, Name: f.Name}
		for _, oid := range f.Touches {
			if r, ok := cat.RelationByOID(oid); ok {
				for _, c := range cfg.PHI[r.Ident()] {
					if watch || !observed[c.Ident()] {
						d.Reads = append(d.Reads, c.Ident())
					}
				}
			}
		}
		if !watch && touchesObservedOnly(cat, cfg, observed, f.Touches) {
			continue // plaintext only
		}
		a.deps = append(a.deps, d)
	}
	return a
}

// touchesObservedOnly says every relation of oids is a configured table
// whose PHI columns are all observed.
func touchesObservedOnly(cat *config.Catalog, cfg *config.Config, observed map[string]bool, oids []uint32) bool {
	if len(observed) == 0 || len(oids) == 0 {
		return false
	}
	for _, oid := range oids {
		r, ok := cat.RelationByOID(oid)
		if !ok || len(cfg.PHI[r.Ident()]) == 0 {
			return false
		}
		for _, c := range cfg.PHI[r.Ident()] {
			if !observed[c.Ident()] {
				return false
			}
		}
	}
	return true
}

func (a *catalogAdapter) Version() uint64 { return a.ver }

func (a *catalogAdapter) Relation(schema, name string) *rewrite.Relation {
	return a.rels[schema+"."+name]
}

func (a *catalogAdapter) PHIDependents() []rewrite.Dependent { return a.deps }

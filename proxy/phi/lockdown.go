package phi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/policy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Lockdown (DESIGN §7): while it is on, no plaintext PHI leaves the proxy
// — a statement that would decrypt (PHI output columns, a FETCH from a
// cursor over them, COPY TO of a PHI relation) is refused with 42501 from
// its next statement on, and a result set in flight stops at its next row
// (the switch moves the decision epoch on, so every cached transform is
// rebuilt, locked). Statements that return no PHI column, writes, and
// non-PHI traffic go on. The switch lives in state_dir and in the
// database (policy.Lockdown); this instance is locked if either says so.

// lockState is what the instance knows of the switch.
type lockState struct {
	file, db policy.Lockdown
}

func (l *lockState) on() bool { return l != nil && (l.file.On || l.db.On) }

// Locked reports whether lockdown is on for this instance.
func (p *Proxy) Locked() bool { return p.lock.Load().on() }

// LockdownStatus is the switch as this instance sees it.
type LockdownStatus struct {
	Locked   bool            `json:"locked"`
	File     policy.Lockdown `json:"state_dir"`
	Database policy.Lockdown `json:"database"`
}

// Lockdown returns the switch's state.
func (p *Proxy) Lockdown() LockdownStatus {
	l := p.lock.Load()
	if l == nil {
		return LockdownStatus{}
	}
	return LockdownStatus{Locked: l.on(), File: l.file, Database: l.db}
}

// SetLockdown switches lockdown on or off for every instance that shares
// the database: it writes state_dir's file and the database's row
// (announced with NOTIFY), applies it here, and audits it. reason is
// required; by says who asked. The file is written first: if the
// database cannot be written, this instance is still switched and the
// error says the others may not be.
func (p *Proxy) SetLockdown(ctx context.Context, on bool, reason, by string) error {
	if err := policy.CheckReason(reason); err != nil {
		return err
	}
	l := policy.Lockdown{On: on, Reason: reason, By: by, Since: time.Now().UTC()}
	cfg := p.cur.Load().cfg
	if err := WriteLockdownFile(cfg.StateDir, l); err != nil {
		return fmt.Errorf("lockdown: state_dir: %w", err)
	}
	cur := p.lock.Load()
	next := &lockState{file: l}
	if cur != nil {
		next.db = cur.db
	}
	var dbErr error
	if len(cfg.PHI) > 0 {
		dbErr = p.withCatalog(ctx, func(ctx context.Context, c catalogQuerier) error {
			return WriteLockdownDB(ctx, c, l)
		})
		if dbErr == nil {
			next.db = l
		}
	}
	p.applyLockdown(next, "admin")
	if dbErr != nil {
		return fmt.Errorf("lockdown switched on this instance only: the database could not be written (%v); switch the others through their admin API", dbErr)
	}
	return nil
}

// refreshLockdown reads the switch from state_dir and the database and
// applies it (at start, on NOTIFY, at each catalog refresh).
func (p *Proxy) refreshLockdown(ctx context.Context, source string) error {
	cfg := p.cur.Load().cfg
	file, err := ReadLockdownFile(cfg.StateDir)
	if err != nil {
		return fmt.Errorf("lockdown: %w", err)
	}
	next := &lockState{file: file}
	if cur := p.lock.Load(); cur != nil {
		next.db = cur.db
	}
	if len(cfg.PHI) > 0 {
		err = p.withCatalog(ctx, func(ctx context.Context, c catalogQuerier) error {
			db, err := ReadLockdownDB(ctx, c)
			if err == nil {
				next.db = db
			}
			return err
		})
	}
	p.applyLockdown(next, source)
	return err
}

// applyLockdown installs next; a change of the effective switch moves
// the decision epoch on, is logged and audited.
func (p *Proxy) applyLockdown(next *lockState, source string) {
	p.lockMu.Lock()
	defer p.lockMu.Unlock()
	prev := p.lock.Swap(next)
	if prev.on() == next.on() && (prev == nil || prev.file == next.file && prev.db == next.db) {
		return
	}
	effective := next.file
	if !next.file.On && next.db.On || next.db.Since.After(next.file.Since) {
		effective = next.db
	}
	if prev.on() != next.on() {
		p.BumpDecisionEpoch()
		if next.on() {
			p.log.Warn("LOCKDOWN ON: no plaintext PHI is served", "source", source, "reason", effective.Reason, "by", effective.By)
		} else {
			p.log.Warn("lockdown off", "source", source, "reason", effective.Reason, "by", effective.By)
		}
	}
	if p.auditor != nil && (prev != nil || next.on()) {
		_ = p.auditor.Record(audit.ActionLockdown, effective.Describe(source))
	}
}

// catalogQuerier is a catalog connection.
type catalogQuerier = *pgx.Conn

// withCatalog runs f on a catalog connection from the pool.
func (p *Proxy) withCatalog(ctx context.Context, f func(context.Context, catalogQuerier) error) error {
	p.mu.Lock()
	pc, err := p.catalogConn(ctx, p.cur.Load().cfg.CatalogDSN)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	defer pc.Release()
	return f(ctx, pc.Conn())
}

// decrypts says st would release plaintext PHI.
func decrypts(st *rewrite.Statement) bool {
	return st != nil && st.TouchesPHI && (len(st.Results) > 0 || st.Action == rewrite.ActionCopyOut || st.Fetch != "")
}

func lockdownError() *pgerr.Error {
	return pgerr.New(pgerr.InsufficientPrivilege, "lockdown is on: phiproxy serves no plaintext PHI").
		WithHint("an administrator switched lockdown on (phiproxy lockdown status); statements that return no PHI column still work")
}

// lockdownSignal wakes the lockdown watcher (a NOTIFY on the channel).
func (p *Proxy) lockdownSignal() {
	select {
	case p.lockWake <- struct{}{}:
	default:
	}
}

// watchLockdown re-reads the switch when a NOTIFY announces it.
func (p *Proxy) watchLockdown() {
	defer p.wg.Done()
	for {
		select {
		case <-p.bg.Done():
			return
		case <-p.lockWake:
			ctx, cancel := context.WithTimeout(p.bg, 10*time.Second)
			if err := p.refreshLockdown(ctx, "database"); err != nil && !errors.Is(err, context.Canceled) {
				p.log.Warn("lockdown state not read", "err", err)
			}
			cancel()
		}
	}
}

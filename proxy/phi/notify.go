package phi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/policy"
)

// Keeping the catalog current with DDL done elsewhere (a DBA, a migration
// tool, another instance): the proxy LISTENs on config.CatalogChannel over
// a dedicated catalog connection and refreshes its snapshot when the event
// triggers announce DDL (debounced), and every
// catalog.refresh_interval in any case, for databases where the triggers
// are absent. DDL sent through this proxy is handled before the session's
// next statement (state.go, awaitCatalog); this covers the rest.

// catalogDebounce is how long a notification waits for the ones that
// follow it (a migration is many statements) before the refresh.
const catalogDebounce = 100 * time.Millisecond

// catalogRetry is the pause before the LISTEN connection is re-opened.
const catalogRetry = time.Second

// CheckCatalogTrigger reports whether the event triggers are installed
// and whether the role of conn may install them.
func CheckCatalogTrigger(ctx context.Context, conn *pgx.Conn) (installed, may bool, err error) {
	var n int
	var super *bool
	if err := conn.QueryRow(ctx, config.CatalogTriggerStatusSQL).Scan(&n, &super); err != nil {
		return false, false, fmt.Errorf("catalog event trigger status: %w", err)
	}
	return n == len(config.CatalogTriggers), super != nil && *super, nil
}

// InstallCatalogTrigger creates the event triggers over conn unless they
// are there (idempotent; a superuser's step: phiproxy overlay install).
func InstallCatalogTrigger(ctx context.Context, conn *pgx.Conn) error {
	ok, _, err := CheckCatalogTrigger(ctx, conn)
	if err != nil || ok {
		return err
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, q := range append([]string{"SET LOCAL search_path = pg_catalog", "SET LOCAL lock_timeout = '5s'", config.OverlayLockSQL}, config.CatalogTriggerDDL()...) {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("catalog event trigger: %w", err)
			}
		}
		return nil
	})
}

// syncCatalogTrigger installs the event triggers at a snapshot load when
// catalog_overlay is install and the catalog role may (a superuser);
// otherwise the periodic refresh is what brings outside DDL in.
func (p *Proxy) syncCatalogTrigger(ctx context.Context, conn *pgx.Conn, cfg *config.Config) {
	if cfg.CatalogOverlay != config.OverlayInstall {
		return
	}
	ok, may, err := CheckCatalogTrigger(ctx, conn)
	if err == nil && !ok && may {
		err = InstallCatalogTrigger(ctx, conn)
	}
	if err != nil {
		p.log.Warn("catalog event trigger not installed: DDL from elsewhere is seen at the periodic refresh", "err", err)
	}
}

// watchCatalog runs until Close: LISTEN, refresh on notifications and
// every catalog.refresh_interval.
func (p *Proxy) watchCatalog() {
	defer p.wg.Done()
	var conn *pgx.Conn
	var dsn string
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	last, failing := time.Now(), false
	for p.bg.Err() == nil {
		cfg := p.cur.Load().cfg
		if conn != nil && (conn.IsClosed() || dsn != cfg.CatalogDSN) {
			_ = conn.Close(context.Background())
			conn = nil
		}
		if conn == nil {
			c, err := listenCatalog(p.bg, cfg.CatalogDSN, p.lockdownSignal)
			if err != nil {
				if !failing && p.bg.Err() == nil {
					p.log.Warn("catalog LISTEN connection failed; retrying", "err", err)
				}
				failing = true
				p.sleep(catalogRetry)
				continue
			}
			if failing {
				// Notifications sent while it was down are lost.
				p.catalogChanged()
				last, failing = time.Now(), false
			}
			conn, dsn = c, cfg.CatalogDSN
		}
		wait := time.Hour
		if every := cfg.Catalog.RefreshInterval; every > 0 {
			wait = max(time.Until(last.Add(every)), time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(p.bg, wait)
		err := conn.PgConn().WaitForNotification(ctx)
		cancel()
		switch {
		case p.bg.Err() != nil:
			return
		case err == nil:
			p.drainNotifications(conn)
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			if cfg.Catalog.RefreshInterval <= 0 {
				continue
			}
		default:
			// The connection is gone (a restarted server): reopen it,
			// then refresh for what was missed meanwhile.
			_ = conn.Close(context.Background())
			conn, failing = nil, true
			p.sleep(catalogRetry / 10)
			continue
		}
		p.catalogChanged()
		last = time.Now()
	}
}

// drainNotifications swallows the notifications of the next
// catalogDebounce, so that one refresh covers a burst of DDL.
func (p *Proxy) drainNotifications(conn *pgx.Conn) {
	deadline := time.Now().Add(catalogDebounce)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithDeadline(p.bg, deadline)
		err := conn.PgConn().WaitForNotification(ctx)
		cancel()
		if err != nil {
			return
		}
	}
}

func (p *Proxy) sleep(d time.Duration) {
	select {
	case <-time.After(d):
	case <-p.bg.Done():
	}
}

// listenCatalog opens the dedicated LISTEN connection: catalog changes,
// and the lockdown switch (lockdown is called for each of its NOTIFYs).
func listenCatalog(ctx context.Context, dsn string, lockdown func()) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		if n.Channel == policy.LockdownChannel {
			lockdown()
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, err
	}
	for _, ch := range []string{config.CatalogChannel, policy.LockdownChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+ch); err != nil {
			_ = conn.Close(context.Background())
			return nil, err
		}
	}
	// Whatever was switched while this connection was down.
	lockdown()
	return conn, nil
}

// catalogConnect opens one connection outside the pool for a catalog_dsn,
// which may carry pgxpool's pool_* parameters (pgx.Connect would send
// them to the server as settings).
func catalogConnect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg.ConnConfig)
}

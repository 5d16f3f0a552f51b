package phi

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/rewrite"
)

// The catalog overlay (docs/sql-support.md, "Catalog introspection"). On
// every snapshot load the proxy checks that the overlay in the database is
// current for the config and the catalog it just read: its views carry
// the marker of this phiproxy's overlay and of the server's version, and
// the PHI map holds exactly the configured bytea columns with their
// logical types. Only then does the planner send catalog reads to it.
// With catalog_overlay: install the proxy first brings a missing or stale
// overlay up to date itself; where it may not (no privilege), or with
// catalog_overlay: use, a stale overlay is not used and catalog reads are
// sent as written: introspection shows bytea, as without the overlay.

// OverlayStatus is what CheckOverlay found.
type OverlayStatus struct {
	// Current: the overlay matches the config and catalog.
	Current bool
	// Installed: the views exist with this phiproxy's marker (the PHI map
	// may still be stale).
	Installed bool
	// Want and Have are the PHI map the config asks for and the one in the
	// database.
	Want, Have []config.OverlayEntry
	// Database is the database that holds the overlay (the catalog's).
	Database string
	// Trigger: the event triggers that announce DDL (notify.go) are
	// installed; set by Overlay only.
	Trigger bool
}

// CheckOverlay reads the overlay's state over conn for cfg and cat.
func CheckOverlay(ctx context.Context, conn *pgx.Conn, cfg *config.Config, cat *config.Catalog) (OverlayStatus, error) {
	st := OverlayStatus{Want: config.OverlayEntries(cfg, cat)}
	var ver int
	var m1, m2, m3 *string
	if err := conn.QueryRow(ctx, config.OverlayStatusSQL).Scan(&ver, &m1, &m2, &m3, &st.Database); err != nil {
		return st, fmt.Errorf("catalog overlay status: %w", err)
	}
	marker := config.OverlayMarker(ver)
	for _, m := range []*string{m1, m2, m3} {
		if m == nil || *m != marker {
			return st, nil
		}
	}
	st.Installed = true
	rows, err := conn.Query(ctx, config.OverlayEntriesSQL)
	if err != nil {
		return st, fmt.Errorf("catalog overlay: %w", err)
	}
	st.Have, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (config.OverlayEntry, error) {
		var e config.OverlayEntry
		err := r.Scan(&e.RelOID, &e.Attnum, &e.TypeOID, &e.Typmod)
		return e, err
	})
	if err != nil {
		return st, fmt.Errorf("catalog overlay: %w", err)
	}
	st.Current = slices.Equal(st.Want, st.Have)
	return st, nil
}

// InstallOverlay creates or updates the overlay over conn for cfg and cat
// in one transaction (an advisory lock serializes instances): the views
// and function only when they are missing or from another phiproxy or
// server version, the PHI map always. It needs a role that may create the
// schema (or owns it).
func InstallOverlay(ctx context.Context, conn *pgx.Conn, cfg *config.Config, cat *config.Catalog) error {
	st, err := CheckOverlay(ctx, conn, cfg, cat)
	if err != nil {
		return err
	}
	if st.Current {
		return nil
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// A session that read the overlay's views in a transaction still
		// open holds a lock that DROP VIEW waits for: rather than stall the
		// snapshot load (and every statement waiting for it), give up and
		// serve without the overlay.
		for _, q := range []string{"SET LOCAL search_path = pg_catalog", "SET LOCAL lock_timeout = '5s'", config.OverlayLockSQL} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("catalog overlay: %w", err)
			}
		}
		stmts := config.OverlayDataSQL(st.Want)
		if !st.Installed {
			ddl, err := overlayDDL(ctx, tx)
			if err != nil {
				return err
			}
			stmts = append(ddl, stmts...)
		}
		for _, q := range stmts {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("catalog overlay: %w", err)
			}
		}
		return nil
	})
}

// overlayDDL builds the overlay's DDL for the server tx runs on.
func overlayDDL(ctx context.Context, tx pgx.Tx) ([]string, error) {
	var ver int
	var def string
	if err := tx.QueryRow(ctx, "SELECT pg_catalog.current_setting('server_version_num')::int4").Scan(&ver); err != nil {
		return nil, fmt.Errorf("catalog overlay: %w", err)
	}
	if err := tx.QueryRow(ctx, config.OverlayColumnsDefSQL).Scan(&def); err != nil {
		return nil, fmt.Errorf("catalog overlay: %w", err)
	}
	rows, err := tx.Query(ctx, config.OverlayAttributesSQL)
	if err != nil {
		return nil, fmt.Errorf("catalog overlay: %w", err)
	}
	attrs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("catalog overlay: %w", err)
	}
	body, ok := rewrite.OverlayColumnsView(def, config.OverlayFunction)
	if !ok {
		return nil, errors.New("catalog overlay: the server's information_schema.columns does not read pg_attribute as phiproxy expects")
	}
	return config.OverlayDDL(attrs, body, config.OverlayMarker(ver)), nil
}

// syncOverlay brings the overlay up to date when the config allows and
// reports whether the planner may use it, in sessions connected to
// database (the catalog's: the overlay exists only there). Failures are
// logged, never fatal: without the overlay introspection shows bytea, as
// before.
func (p *Proxy) syncOverlay(ctx context.Context, conn *pgx.Conn, cfg *config.Config, cat *config.Catalog) (database string, ok bool) {
	if cfg.CatalogOverlay == config.OverlayOff {
		return "", false
	}
	st, err := CheckOverlay(ctx, conn, cfg, cat)
	if err == nil && st.Current {
		return st.Database, true
	}
	if err == nil && cfg.CatalogOverlay == config.OverlayInstall {
		if err = InstallOverlay(ctx, conn, cfg, cat); err == nil {
			st, err = CheckOverlay(ctx, conn, cfg, cat)
			if err == nil && st.Current {
				return st.Database, true
			}
		}
	}
	if err != nil {
		p.log.Warn("catalog overlay not in use: introspection shows PHI columns as bytea", "mode", cfg.CatalogOverlay, "err", err)
	} else {
		p.log.Warn("catalog overlay missing or stale: introspection shows PHI columns as bytea (run phiproxy overlay install)", "mode", cfg.CatalogOverlay)
	}
	return "", false
}

// Overlay connects to dsn (the config's catalog_dsn when empty), reads the
// catalog for cfg and reports the overlay's state; with install it first
// creates or updates the overlay and installs the event triggers that
// announce DDL (phiproxy overlay install, for a DBA whose role may create
// what the catalog role may not; the triggers need a superuser).
func Overlay(ctx context.Context, cfg *config.Config, dsn string, install bool) (OverlayStatus, error) {
	if dsn == "" {
		dsn = cfg.CatalogDSN
	}
	conn, err := catalogConnect(ctx, dsn)
	if err != nil {
		return OverlayStatus{}, fmt.Errorf("catalog connection: %w", err)
	}
	defer conn.Close(context.Background())
	cat, err := config.LoadCatalog(ctx, conn, cfg, 1)
	if err != nil {
		return OverlayStatus{}, err
	}
	if err := cat.Check(cfg); err != nil {
		return OverlayStatus{}, fmt.Errorf("the config does not match the database:\n%w", err)
	}
	if install {
		if err := InstallOverlay(ctx, conn, cfg, cat); err != nil {
			return OverlayStatus{}, err
		}
		if err := InstallCatalogTrigger(ctx, conn); err != nil {
			return OverlayStatus{}, err
		}
	}
	st, err := CheckOverlay(ctx, conn, cfg, cat)
	if err != nil {
		return st, err
	}
	st.Trigger, _, err = CheckCatalogTrigger(ctx, conn)
	return st, err
}

package check

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/policy"
)

// keysets reports keysets the phi map needs that keys.dir lacks, or that
// keys.dir could not be read at all.
func (r *run) keysets(context.Context) error {
	if r.in.KeysErr != nil {
		r.add(Error, KindKeysUnreadable, "keys "+r.cfg.Keys.Dir,
			fmt.Sprintf("the keysets could not be read: %v", r.in.KeysErr),
			fmt.Sprintf("phiproxy keys init --config %s (a file: KEK), or set VAULT_TOKEN (an hcvault:// KEK); see docs/keys.md", r.fixCfg))
		return nil
	}
	byName := r.cfg.KeyNames()
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, ok := r.keys[n]; ok {
			continue
		}
		cols := byName[n]
		r.add(Error, KindKeysetMissing, "keyset "+n,
			fmt.Sprintf("missing from %s (%s key of %s): the proxy cannot start", r.cfg.Keys.Dir, cols[0].Mode, identList(cols)),
			fmt.Sprintf("phiproxy keys create --config %s", r.fixCfg))
	}
	return nil
}

func identList(cols []config.Column) string {
	s := ""
	for i, c := range cols {
		if i > 0 {
			s += ", "
		}
		s += c.Ident()
	}
	return s
}

// catalogNotification reports the catalog event triggers and the catalog
// overlay missing or stale.
func (r *run) catalogNotification() {
	fix := fmt.Sprintf("phiproxy overlay install --config %s, as a superuser (--dsn)", r.fixCfg)
	if !r.in.EventTrigger {
		r.add(Warning, KindEventTrigger, "event trigger "+config.CatalogTriggers[0].Name,
			fmt.Sprintf("the catalog event triggers are missing: DDL run around the proxy reaches it only at catalog.refresh_interval (%s)", r.cfg.Catalog.RefreshInterval),
			fix)
	}
	if r.cfg.CatalogOverlay == config.OverlayOff {
		return
	}
	obj := "catalog overlay " + config.OverlaySchema
	switch st := r.in.Overlay; {
	case st.Err != nil:
		r.add(Warning, KindOverlayUnavailable, obj, fmt.Sprintf("could not be read: %v", st.Err), fix)
	case !st.Installed:
		r.add(Warning, KindOverlayMissing, obj,
			fmt.Sprintf("not installed (catalog_overlay: %s): introspection through the proxy shows PHI columns as bytea", r.cfg.CatalogOverlay), fix)
	case !st.Current:
		r.add(Warning, KindOverlayStale, obj,
			"stale: its PHI map differs from the config and the catalog, so the proxy does not use it", fix)
	}
}

// policyRoles warns about roles the policy rules name that the database
// does not have: such a rule can never match (a typo, or a role not
// created yet).
func (r *run) policyRoles(ctx context.Context) error {
	where := map[string][]string{}
	for _, col := range r.cfg.Columns() {
		p := col.Policy
		var roles []string
		for _, rule := range append(append([]policy.Rule{}, p.Read...), p.Write...) {
			roles = append(roles, rule.Roles...)
		}
		if p.BreakGlass != nil {
			roles = append(roles, p.BreakGlass.Roles...)
		}
		for _, role := range roles {
			if !slices.Contains(where[role], col.Ident()) {
				where[role] = append(where[role], col.Ident())
			}
		}
	}
	if len(where) == 0 {
		return nil
	}
	names := make([]string, 0, len(where))
	for n := range where {
		names = append(names, n)
	}
	sort.Strings(names)
	rows, err := r.q.Query(ctx, "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY($1)", names)
	if err != nil {
		return fmt.Errorf("roles: %w", err)
	}
	exists := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		exists[n] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, n := range names {
		if !exists[n] {
			r.add(Warning, KindRoleMissing, "role "+n,
				fmt.Sprintf("named in the policy of %s but not a role of the database: those rules never match", strings.Join(where[n], ", ")),
				"create the role, or fix its name in the phi: section")
		}
	}
	return nil
}

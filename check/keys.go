package check

import (
	"context"
	"fmt"
	"sort"

	"github.com/phiproxy/phiproxy/config"
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

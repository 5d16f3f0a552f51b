package phi

import (
	"time"

	"github.com/phiproxy/phiproxy/rewrite"
)

// Status is what the admin API and metrics show of a Proxy: no value, no
// SQL text.
type Status struct {
	// PHI: PHI columns are configured (else sessions are pure
	// pass-through, and there is no catalog snapshot or keyring).
	PHI bool
	// KeysLoaded: the keyring is open.
	KeysLoaded bool
	// CatalogVersion is the version of the catalog snapshot in use.
	CatalogVersion uint64
	// CatalogRead is when the catalog was last read successfully (a
	// refresh that found nothing changed counts: the snapshot in use is
	// still the database's catalog as of then). Zero without PHI.
	CatalogRead time.Time
	// PlanCache counts the plan cache's lookups.
	PlanCache rewrite.CacheStats
	// Locked: lockdown is on.
	Locked bool
}

// Status returns the Proxy's status. Safe for concurrent use; cheap
// enough for every scrape.
func (p *Proxy) Status() Status {
	s := p.cur.Load()
	st := Status{PHI: len(s.cfg.PHI) > 0, KeysLoaded: p.keys != nil, PlanCache: p.cache.Stats(), Locked: p.Locked()}
	if s.cat != nil {
		st.CatalogVersion = s.cat.Version
	}
	if ns := p.catalogRead.Load(); ns != 0 {
		st.CatalogRead = time.Unix(0, ns)
	}
	return st
}

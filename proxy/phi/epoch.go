package phi

import (
	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/pgerr"
)

// Decision epochs. A result transform (rowX) is a decision: which output
// columns are decrypted, with which cipher (and, with the policy engine,
// whether they are served in plaintext, masked or denied). Transforms are
// cached across statements — per prepared statement and result formats
// (resultX), per Query plan (queryX) — and a bound portal keeps its own
// until it is closed. Each carries the epoch it was built under; after
// Proxy.BumpDecisionEpoch every one of them is rebuilt before it serves
// another row: the caches check at lookup, a portal at Execute (client
// goroutine) and at each of its DataRows (server goroutine: one atomic
// load), so a bump between two Executes of an open portal takes effect at
// the second, and one in the middle of a result set at its next row.

// fresh returns x, or x rebuilt when the decision epoch has moved on
// since it was built. The rebuilt transform keeps x's output formats.
func (s *session) fresh(x *rowX) *rowX {
	if x == nil || x.epoch == s.p.epoch.Load() {
		return x
	}
	// The portal finishes under the policy decision it started with
	// (x.masks); lockdown is checked anew (newRowX).
	return s.newRowX(x.results, func(i int) int16 {
		if c := x.at(i); c != nil {
			return c.format
		}
		return codec.TextFormat
	}, x.masks)
}

// portalX is the result transform of an Execute's portal (for a FETCH, of
// its cursor: cursorPortalX), rebuilt in the FIFO's front entry when stale
// (server goroutine).
func (s *session) portalX(e *entry) (*rowX, *pgerr.Error) {
	x, err := s.cursorPortalX(&e.portal)
	if err != nil {
		return nil, err
	}
	x = s.fresh(x)
	e.portal.x = x
	return x, nil
}

// queryRowX is the result transform of a Query's current statement,
// rebuilt when stale (server goroutine).
func (s *session) queryRowX(q *queryRun) *rowX {
	x := s.fresh(q.x)
	q.x = x
	return x
}

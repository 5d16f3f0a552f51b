package rewrite

// The plan cache is bounded by bytes as well as by entries: a count bound
// alone let 1000 distinct 1 MB pass-through statements take the proxy
// from 33 MB to 1.2 GB. Each entry is charged an estimate of what it
// keeps reachable — its key's text, the plan's text, and per statement
// what the plan holds (slots with their plaintext, edits, params,
// results, the audit text computed on first use). The estimate errs on
// the high side; its job is a bound, not an exact account.

// Cache bounds (defaults for NewCache).
const (
	// DefaultCacheBytes bounds the estimated bytes a Cache holds.
	DefaultCacheBytes = 64 << 20
	// DefaultCacheMaxText is the longest SQL text (bytes) a Cache keeps
	// a plan or a shape template for: a longer one is planned on every
	// use, which costs what parsing it costs, and never displaces the
	// plans of other sessions.
	DefaultCacheMaxText = 64 << 10
)

// CacheOption configures NewCache.
type CacheOption func(*Cache)

// CacheBytes bounds the estimated bytes the cache holds. Each of the 16
// shards gets a sixteenth; an entry larger than that is not cached.
func CacheBytes(n int) CacheOption { return func(c *Cache) { c.maxBytes = n } }

// CacheMaxText sets the longest SQL text that is cached.
func CacheMaxText(n int) CacheOption { return func(c *Cache) { c.maxText = n } }

// CacheLargePlanBytes sets the byte budget of long texts planned at once
// by the sessions sharing the cache (limits.go).
func CacheLargePlanBytes(n int) CacheOption { return func(c *Cache) { c.largeBytes = n } }

// entryOverhead is charged to every entry: the entry, its map slot, the
// key's Session strings' headers, the Plan struct.
const entryOverhead = 256

func (e *cacheEntry) bytes() int {
	n := entryOverhead + len(e.key.sql) + sessionBytes(e.key.sess)
	if e.plan != nil {
		n += e.plan.approxBytes()
	}
	if t := e.tmpl; t != nil {
		n += 64 + 24*len(t.lits) + len(t.mentions)
		for _, b := range t.binds {
			n += 24 + 16*len(b)
		}
		n += t.plan.approxBytes()
	}
	return n
}

func sessionBytes(s Session) int {
	return len(s.SearchPath) + len(s.User) + len(s.ResetPath) + len(s.SessionUser) + len(s.Database) + len(s.Temp)
}

// approxBytes estimates what p keeps reachable. p.SQL is counted even
// when it shares the key's bytes (erring high).
func (p *Plan) approxBytes() int {
	if p == nil {
		return 0
	}
	n := 128 + len(p.SQL) + len(p.EndUser)
	for _, t := range p.Tags {
		n += 32 + len(t.Key) + len(t.Value)
	}
	for _, st := range p.Statements {
		n += st.approxBytes()
	}
	return n
}

func (st *Statement) approxBytes() int {
	n := 512 + len(st.SearchPath) + len(st.Role) + len(st.TempCreate) + len(st.Creates) +
		len(st.Savepoint) + len(st.SetEndUser) + len(st.Prepare) + len(st.Deallocate) +
		len(st.Fetch) + len(st.CloseCursor)
	if st.TouchesPHI {
		// The audit text: the statement's text and its normalized form,
		// computed on first use and then kept with the plan.
		n += 64 + 2*st.Length
	}
	for _, s := range st.Relations {
		n += 16 + len(s)
	}
	for _, s := range st.Columns {
		n += 16 + len(s)
	}
	for _, s := range st.TempDrop {
		n += 16 + len(s)
	}
	for _, s := range st.Slots {
		n += 96 + len(s.Text)
	}
	for _, e := range st.Edits {
		n += 40 + len(e.Text)
	}
	n += 160*len(st.Params) + 128*len(st.Results) + 8*len(st.Redact)
	if st.Execute != nil {
		n += 64 + len(st.Execute.Name) + 64*len(st.Execute.Args)
	}
	if st.Copy != nil {
		n += 128 + 160*len(st.Copy.Fields)
		for k, v := range st.Copy.Options {
			n += 48 + len(k) + len(v)
		}
	}
	if st.Declare != nil {
		n += 48 + len(st.Declare.Name)
	}
	return n
}

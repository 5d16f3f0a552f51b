package rewrite

import (
	"hash/maphash"
	"sync"
)

// Cache is a bounded LRU of plans keyed by the exact SQL text, the catalog
// version and the Session (search_path, users, temporary relations). It is safe for concurrent
// use by every session; a hit takes one shard lock and allocates nothing.
// Refusals are cached too. The same LRU holds the literal-shape templates
// (shape.go), keyed by shape instead of text. It is bounded by entries and
// by estimated bytes (cache_size.go); texts longer than its maxText are
// never cached.
type Cache struct {
	seed     maphash.Seed
	shards   []cacheShard
	maxBytes int
	maxText  int
	// large is the byte budget of texts over maxText being planned.
	large      *byteBudget
	largeBytes int
}

type cacheKey struct {
	sql     string
	version uint64
	sess    Session
	// shape: sql is a shape key and the entry holds a template.
	shape bool
}

type cacheEntry struct {
	key        cacheKey
	plan       *Plan
	err        error
	tmpl       *shapeTemplate
	size       int
	prev, next *cacheEntry
}

type cacheShard struct {
	mu  sync.Mutex
	max int
	// maxBytes bounds bytes, the sum of the entries' size estimates.
	maxBytes, bytes int
	m               map[cacheKey]*cacheEntry
	head            cacheEntry // sentinel: head.next is the most recent
	_               [32]byte   // keep shards' locks on separate cache lines
	count           int
	// Lookups, counted under mu (no atomic on the hot path): hits and
	// misses of exact-text plans, and of shape templates.
	hits, misses           uint64
	shapeHits, shapeMisses uint64
}

const cacheShards = 16

// NewCache returns a cache holding at most size plans (at least one per
// shard) and, by default, at most DefaultCacheBytes estimated bytes of
// them; texts longer than DefaultCacheMaxText are not cached.
func NewCache(size int, opts ...CacheOption) *Cache {
	c := &Cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, cacheShards),
		maxBytes: DefaultCacheBytes, maxText: DefaultCacheMaxText, largeBytes: DefaultLargePlanBytes}
	for _, o := range opts {
		o(c)
	}
	c.large = newByteBudget(c.largeBytes)
	per := (size + cacheShards - 1) / cacheShards
	if per < 1 {
		per = 1
	}
	perBytes := c.maxBytes / cacheShards
	for i := range c.shards {
		s := &c.shards[i]
		s.max = per
		s.maxBytes = perBytes
		s.m = make(map[cacheKey]*cacheEntry, per)
		s.head.next, s.head.prev = &s.head, &s.head
	}
	return c
}

func (c *Cache) shard(k cacheKey) *cacheShard {
	return &c.shards[maphash.String(c.seed, k.sql)%cacheShards]
}

func (c *Cache) get(k cacheKey) (*cacheEntry, bool) {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.m[k]
	switch {
	case k.shape && ok:
		s.shapeHits++
	case k.shape:
		s.shapeMisses++
	case ok:
		s.hits++
	default:
		s.misses++
	}
	if ok && s.head.next != e {
		e.prev.next, e.next.prev = e.next, e.prev
		e.next, e.prev = s.head.next, &s.head
		s.head.next.prev = e
		s.head.next = e
	}
	s.mu.Unlock()
	return e, ok
}

func (c *Cache) put(k cacheKey, p *Plan, err error) {
	c.add(&cacheEntry{key: k, plan: p, err: err})
}

func (c *Cache) putShape(k cacheKey, t *shapeTemplate) {
	c.add(&cacheEntry{key: k, tmpl: t})
}

// cacheable reports whether a text is short enough to be cached.
func (c *Cache) cacheable(sql string) bool { return len(sql) <= c.maxText }

func (c *Cache) add(e *cacheEntry) {
	k := e.key
	if !c.cacheable(k.sql) {
		return
	}
	e.size = e.bytes()
	s := c.shard(k)
	if e.size > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; ok {
		return
	}
	s.m[k] = e
	e.next, e.prev = s.head.next, &s.head
	s.head.next.prev = e
	s.head.next = e
	s.count++
	s.bytes += e.size
	for s.count > s.max || s.bytes > s.maxBytes {
		last := s.head.prev
		last.prev.next = &s.head
		s.head.prev = last.prev
		delete(s.m, last.key)
		s.count--
		s.bytes -= last.size
	}
}

// Bytes returns the estimated bytes the cached plans and templates hold.
func (c *Cache) Bytes() int {
	_, bytes := c.totals()
	return bytes
}

// Len returns the number of cached plans and shape templates.
func (c *Cache) Len() int {
	count, _ := c.totals()
	return count
}

// totals sums the entries and their estimated bytes over the shards.
func (c *Cache) totals() (count, bytes int) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		count += s.count
		bytes += s.bytes
		s.mu.Unlock()
	}
	return count, bytes
}

// CacheStats counts a Cache's lookups since it was made. A statement's
// text is looked up first (Hits, Misses); on a miss for text that names
// PHI, its literal shape is (ShapeHits, ShapeMisses).
type CacheStats struct {
	Hits, Misses           uint64
	ShapeHits, ShapeMisses uint64
}

// Stats returns the lookup counts (for metrics). Safe for concurrent use.
func (c *Cache) Stats() CacheStats {
	var st CacheStats
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		st.Hits += s.hits
		st.Misses += s.misses
		st.ShapeHits += s.shapeHits
		st.ShapeMisses += s.shapeMisses
		s.mu.Unlock()
	}
	return st
}

package rewrite

// Catalog is the planner's view of the live schema. The proxy implements it
// from a pg_catalog snapshot; tests use MemCatalog. Implementations must be
// safe for concurrent use and must not change while a Planner uses them: a
// refreshed snapshot is a new Catalog with a new Version.
type Catalog interface {
	// Version identifies the snapshot; it is part of the plan cache key.
	Version() uint64
	// Relation returns the relation schema.name (exact, folded names), or
	// nil if there is none.
	Relation(schema, name string) *Relation
	// PHIDependents lists the views and functions whose definition reads a
	// PHI relation. Their names join the pass-through pre-check, and a
	// function listed here is refused wherever it is called.
	PHIDependents() []Dependent
}

// RelKind is a relation's pg_class.relkind.
type RelKind byte

// Relation kinds.
const (
	KindTable            RelKind = 'r'
	KindPartitionedTable RelKind = 'p'
	KindView             RelKind = 'v'
	KindMatView          RelKind = 'm'
	KindForeignTable     RelKind = 'f'
)

// Relation is one table, view or materialized view.
type Relation struct {
	OID    uint32
	Schema string
	Name   string
	Kind   RelKind
	// Columns in attnum order, live (not dropped) user columns only.
	Columns []Attr
	// PHIDeps, for a view or materialized view, lists the PHI columns
	// ("schema.table.column") its definition reads. A view with PHIDeps is
	// refused unless its own output columns are configured as PHI.
	PHIDeps []string
	// Keys are the relation's primary key and its unique keys whose
	// columns are all NOT NULL (no expression, no partial, deferrable or
	// invalid index), each as attnums. Grouping by one of them makes each
	// group a single row of this relation.
	Keys [][]int16
}

// Attr is one column of a relation.
type Attr struct {
	Name string
	Num  int16
	// Type is the SQL type in the database (bytea for an encrypted column).
	Type string
}

// DependentKind says what a Dependent is.
type DependentKind string

// Dependent kinds.
const (
	DependentView     DependentKind = "view"
	DependentFunction DependentKind = "function"
)

// Dependent is a view or function whose definition reads PHI relations.
type Dependent struct {
	Kind   DependentKind
	Schema string
	Name   string
	Reads  []string // PHI columns ("schema.table.column") it reads
}

// MemCatalog is an in-memory Catalog for tests and tools. Build it with
// Add* and treat it as immutable once a Planner uses it.
type MemCatalog struct {
	Ver        uint64
	rels       map[string]*Relation
	dependents []Dependent
	nextOID    uint32
}

// NewMemCatalog returns an empty catalog with version ver.
func NewMemCatalog(ver uint64) *MemCatalog {
	return &MemCatalog{Ver: ver, rels: map[string]*Relation{}, nextOID: 16384}
}

// AddTable adds a table with the given columns (attnums from 1) and returns
// it; its OID is assigned in order from 16384.
func (c *MemCatalog) AddTable(schema, name string, cols ...Attr) *Relation {
	return c.add(KindTable, schema, name, cols, nil)
}

// AddView adds a view reading the PHI columns deps.
func (c *MemCatalog) AddView(schema, name string, deps []string, cols ...Attr) *Relation {
	return c.add(KindView, schema, name, cols, deps)
}

// AddKey records a key (primary key, or unique and NOT NULL) of the
// relation schema.name over the named columns; unknown names are ignored.
func (c *MemCatalog) AddKey(schema, name string, cols ...string) {
	r := c.rels[schema+"."+name]
	if r == nil {
		return
	}
	var key []int16
	for _, n := range cols {
		for _, a := range r.Columns {
			if a.Name == n {
				key = append(key, a.Num)
			}
		}
	}
	if len(key) == len(cols) && len(key) > 0 {
		r.Keys = append(r.Keys, key)
	}
}

// AddFunction records a function whose body reads the PHI columns reads.
func (c *MemCatalog) AddFunction(schema, name string, reads ...string) {
	c.dependents = append(c.dependents, Dependent{Kind: DependentFunction, Schema: schema, Name: name, Reads: reads})
}

func (c *MemCatalog) add(kind RelKind, schema, name string, cols []Attr, deps []string) *Relation {
	r := &Relation{OID: c.nextOID, Schema: schema, Name: name, Kind: kind, PHIDeps: deps}
	c.nextOID++
	for i, a := range cols {
		if a.Num == 0 {
			a.Num = int16(i + 1)
		}
		r.Columns = append(r.Columns, a)
	}
	c.rels[schema+"."+name] = r
	if len(deps) > 0 {
		c.dependents = append(c.dependents, Dependent{Kind: DependentView, Schema: schema, Name: name, Reads: deps})
	}
	return r
}

// Version implements Catalog.
func (c *MemCatalog) Version() uint64 { return c.Ver }

// Relation implements Catalog.
func (c *MemCatalog) Relation(schema, name string) *Relation { return c.rels[schema+"."+name] }

// PHIDependents implements Catalog.
func (c *MemCatalog) PHIDependents() []Dependent { return c.dependents }

package rewrite

import (
	pg "github.com/pganalyze/pg_query_go/v5"
)

// Grouping by a randomized PHI column compares ciphertexts, which differ
// for equal plaintexts: in general it splits groups. When the same
// relation reference's primary key (or a unique NOT NULL key) is grouped
// too, each group is one row of that relation, and every row a group
// collects carries the very same stored ciphertext: grouping by it is then
// exact. Django's annotate() on an unmanaged model groups by every column
// (GROUP BY id, name, ssn, diagnosis, ...). The same holds for DISTINCT
// and DISTINCT ON. Only plain column references of this query level's
// FROM items count; grouping sets (ROLLUP, CUBE, GROUPING SETS) never
// do, as they also group by subsets.

// setKeys records rel's keys and marks each column with its origin.
func (s *source) setKeys(rel *Relation) {
	for i := range s.cols {
		s.cols[i].src, s.cols[i].at = s, i
	}
	index := map[int16]int{}
	for i, at := range rel.Columns {
		index[at.Num] = i
	}
next:
	for _, k := range rel.Keys {
		var key []int
		for _, num := range k {
			i, ok := index[num]
			if !ok {
				continue next
			}
			key = append(key, i)
		}
		if len(key) > 0 {
			s.keys = append(s.keys, key)
		}
	}
}

// noOrigin drops the origins of columns that come through a subquery or
// a CTE: the key argument is kept to one query level.
func noOrigin(cols []colInfo) []colInfo {
	out := make([]colInfo, len(cols))
	for i, c := range cols {
		c.src, c.at = nil, 0
		out[i] = c
	}
	return out
}

// origin resolves n, when it is a column reference to a column of one of
// this query level's FROM items, to that column; nil otherwise (also when
// the name is ambiguous or an item's columns are unknown).
func (a *analyzer) origin(n *pg.Node, sc *scope) *colInfo {
	cr := n.GetColumnRef()
	if cr == nil {
		return nil
	}
	var names []string
	for _, f := range cr.Fields {
		s := f.GetString_()
		if s == nil {
			return nil
		}
		names = append(names, s.Sval)
	}
	var found *colInfo
	switch len(names) {
	case 1:
		for _, src := range sc.sources {
			if src.opaque {
				return nil
			}
			if c, ok := src.col(names[0]); ok {
				if found != nil {
					return nil
				}
				found = &c
			}
		}
	case 2, 3:
		q := names[len(names)-2]
		for _, src := range sc.sources {
			if src.alias != q || len(names) == 3 && (src.aliasedByAlias || src.schema != names[0]) {
				continue
			}
			if found != nil {
				return nil
			}
			c, ok := src.col(names[len(names)-1])
			if !ok {
				return nil
			}
			found = &c
		}
	}
	if found == nil || found.src == nil {
		return nil
	}
	return found
}

// outputNamed returns the origin of the output column a bare name n
// denotes (nil if it has none); ok is false when no output has the name.
func outputNamed(n *pg.Node, sc *scope) (*colInfo, bool) {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) != 1 || cr.Fields[0].GetString_() == nil {
		return nil, false
	}
	name := cr.Fields[0].GetString_().Sval
	for i := range sc.outputs {
		if sc.outputs[i].name == name {
			if sc.outputs[i].src == nil {
				return nil, true
			}
			return &sc.outputs[i], true
		}
	}
	return nil, false
}

// keyed returns the relation references one of whose keys is among cols.
func keyed(cols []*colInfo) map[*source]bool {
	grouped := map[*source]map[int]bool{}
	for _, c := range cols {
		if c == nil || c.src == nil {
			continue
		}
		if grouped[c.src] == nil {
			grouped[c.src] = map[int]bool{}
		}
		grouped[c.src][c.at] = true
	}
	out := map[*source]bool{}
	for src, at := range grouped {
		for _, k := range src.keys {
			all := true
			for _, i := range k {
				all = all && at[i]
			}
			if all {
				out[src] = true
				break
			}
		}
	}
	return out
}

// groupBy analyzes the items of GROUP BY or DISTINCT ON.
func (a *analyzer) groupBy(items []*pg.Node, sc *scope, what string) error {
	var cols []*colInfo
	for _, g := range items {
		if g.GetGroupingSet() != nil || g.GetList() != nil {
			cols = nil
			break
		}
		if what == "DISTINCT ON" {
			// DISTINCT ON reads a bare name as an output column first
			// (as ORDER BY does), GROUP BY as an input column.
			if o, ok := outputNamed(g, sc); ok {
				cols = append(cols, o)
				continue
			}
		}
		cols = append(cols, a.origin(g, sc))
	}
	k := keyed(cols)
	for i, g := range items {
		var c *colInfo
		if i < len(cols) {
			c = cols[i]
		}
		if err := a.groupItem(g, sc, what, c != nil && k[c.src]); err != nil {
			return err
		}
	}
	return nil
}

// distinct checks SELECT DISTINCT over the output columns out.
func (a *analyzer) distinct(out []colInfo) error {
	cols := make([]*colInfo, len(out))
	for i := range out {
		if !out[i].opaque {
			cols[i] = &out[i]
		}
	}
	k := keyed(cols)
	for _, c := range out {
		if c.phi == nil || c.src != nil && k[c.src] {
			continue
		}
		if c.phi.Mode == Randomized {
			return a.refuseCol(c.phi, -1, "SELECT DISTINCT", hintGroupRandomized)
		}
		if err := a.requireDet(c.phi, -1, "SELECT DISTINCT"); err != nil { // a predicate for policy
			return err
		}
	}
	return nil
}

const hintGroupRandomized = "a randomized column can be grouped only together with its table's primary key (or a unique NOT NULL key) from the same FROM item; group by the key too, or declare the column mode: deterministic"

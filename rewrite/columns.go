package rewrite

import (
	"fmt"
	"sort"
	"strings"
)

// Column is one configured PHI column, as the rewriter needs it. The proxy
// builds these from config.Column (same field names); rewrite does not import
// config so that its dependency closure stays free of file and network code.
type Column struct {
	Schema string
	Table  string
	Name   string
	// Type is the canonical logical type clients see (text, varchar, bpchar,
	// date, timestamp, timestamptz, int4, int8, numeric, bool, uuid, jsonb),
	// with its modifier in config's canonical spelling ("varchar(11)",
	// "numeric(10,2)", "timestamp(0)", "bpchar(2)").
	Type string
	// Mode is "randomized" or "deterministic".
	Mode string
	// Key names the key; columns sharing a key may be compared and joined.
	// Empty means the column's own identity.
	Key string
}

// Ident is "schema.table.column".
func (c Column) Ident() string { return c.Schema + "." + c.Table + "." + c.Name }

// Relation is "schema.table".
func (c Column) Relation() string { return c.Schema + "." + c.Table }

// Column modes.
const (
	Randomized    = "randomized"
	Deterministic = "deterministic"
)

var logicalTypes = map[string]bool{
	"text": true, "varchar": true, "bpchar": true, "date": true, "timestamp": true, "timestamptz": true,
	"int4": true, "int8": true, "numeric": true, "bool": true, "uuid": true, "jsonb": true,
}

// baseType is a logical type without its modifier: the type of a column
// declared varchar(11) is "varchar(11)" (config's canonical spelling;
// config validates the modifier), its base type "varchar".
func baseType(t string) string {
	if i := strings.IndexByte(t, '('); i >= 0 {
		return t[:i]
	}
	return t
}

// Columns is the immutable PHI column map, indexed for planning.
type Columns struct {
	byRel map[string]map[string]*Column // "schema.table" → column name → column
	// relNames holds the relation names (without schema) of PHI relations, as
	// stored (exact) — used for "does not exist" refusals.
	relNames map[string]bool
	list     []Column
}

// NewColumns validates cols and returns the map. Names are exact
// (PostgreSQL's folded form: usually lower case).
func NewColumns(cols []Column) (*Columns, error) {
	m := &Columns{byRel: map[string]map[string]*Column{}, relNames: map[string]bool{}}
	for _, c := range cols {
		if c.Schema == "" || c.Table == "" || c.Name == "" {
			return nil, fmt.Errorf("rewrite: PHI column %q: schema, table and name are required", c.Ident())
		}
		if c.Mode != Randomized && c.Mode != Deterministic {
			return nil, fmt.Errorf("rewrite: PHI column %s: unknown mode %q", c.Ident(), c.Mode)
		}
		if !logicalTypes[baseType(c.Type)] {
			return nil, fmt.Errorf("rewrite: PHI column %s: unknown logical type %q", c.Ident(), c.Type)
		}
		if c.Key == "" {
			c.Key = c.Ident()
		}
		rel := c.Relation()
		if m.byRel[rel] == nil {
			m.byRel[rel] = map[string]*Column{}
		}
		if _, dup := m.byRel[rel][c.Name]; dup {
			return nil, fmt.Errorf("rewrite: PHI column %s declared twice", c.Ident())
		}
		cc := c
		m.byRel[rel][c.Name] = &cc
		m.relNames[c.Table] = true
		m.list = append(m.list, cc)
	}
	sort.Slice(m.list, func(i, j int) bool { return m.list[i].Ident() < m.list[j].Ident() })
	return m, nil
}

// List returns the columns sorted by identity.
func (m *Columns) List() []Column { return append([]Column(nil), m.list...) }

func (m *Columns) lookup(schema, table, name string) *Column {
	if m == nil {
		return nil
	}
	return m.byRel[schema+"."+table][name]
}

func (m *Columns) hasRelation(schema, table string) bool {
	return m != nil && len(m.byRel[schema+"."+table]) > 0
}

// ParseSearchPath splits a search_path setting as SHOW search_path prints
// it ("\"$user\", public") into schema names: unquoted names are folded to
// lower case, double-quoted ones kept exact.
func ParseSearchPath(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == ',') {
			i++
		}
		if i >= len(s) {
			break
		}
		var b strings.Builder
		if s[i] == '"' {
			i++
			for i < len(s) {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			for i < len(s) && s[i] != ',' {
				i++
			}
		} else {
			j := i
			for i < len(s) && s[i] != ',' {
				i++
			}
			b.WriteString(foldIdent(strings.TrimSpace(s[j:i])))
		}
		out = append(out, b.String())
	}
	return out
}

func foldIdent(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

package config

import (
	"sort"
	"strings"

	"github.com/phiproxy/phiproxy/policy"
)

// Column is one PHI column.
type Column struct {
	Schema string
	Table  string
	Name   string
	// Type is the logical type clients see, in the canonical spelling of
	// LogicalType.String: the base name (see CanonicalType) and the type
	// modifier if one was declared ("varchar(11)", "numeric(10,2)").
	Type string
	// Mode is randomized or deterministic.
	Mode string
	// Key is the key name; by default the column's own identity. It is also
	// the associated data of every ciphertext of the column.
	Key string
	// Default is the read access when no rule matches, as written:
	// plaintext, mask:last4, mask:year, mask:redact or deny.
	Default string
	// Policy is the column's read and write rules, default and
	// break-glass, validated (DESIGN §7).
	Policy policy.Column
	// Enforce is EnforceOn (the default: the column is bytea ciphertext)
	// or EnforceObserve (still plaintext, of any type: statements are
	// planned and reported, forwarded unchanged; docs/observe.md).
	Enforce string
	// Line is where the column is declared in the config file.
	Line int
}

// Ident is the column's identity "schema.table.column".
func (c Column) Ident() string { return c.Schema + "." + c.Table + "." + c.Name }

// Relation is "schema.table".
func (c Column) Relation() string { return c.Schema + "." + c.Table }

// Observed says the column is in observe mode: plaintext in PostgreSQL,
// planned and reported but never encrypted, decrypted or refused.
func (c Column) Observed() bool { return c.Enforce == EnforceObserve }

// Enforcement modes of a PHI column.
const (
	EnforceOn      = "on"
	EnforceObserve = "observe"
)

// Modes of a PHI column.
const (
	ModeRandomized    = "randomized"
	ModeDeterministic = "deterministic"
)

// Read access values for Default.
const (
	AccessPlaintext = "plaintext"
	AccessDeny      = "deny"
)

// Types lists the logical types a PHI column can have, with accepted aliases
// mapping to the canonical name.
var typeAliases = map[string]string{
	"text": "text", "varchar": "varchar", "character varying": "varchar",
	"date": "date", "timestamp": "timestamp", "timestamp without time zone": "timestamp",
	"timestamptz": "timestamptz", "timestamp with time zone": "timestamptz",
	"int4": "int4", "integer": "int4", "int": "int4",
	"int8": "int8", "bigint": "int8",
	"numeric": "numeric", "decimal": "numeric",
	"bool": "bool", "boolean": "bool",
	"uuid": "uuid", "jsonb": "jsonb",
}

// CanonicalType returns the canonical logical type name for t, or false.
func CanonicalType(t string) (string, bool) {
	c, ok := typeAliases[strings.ToLower(strings.TrimSpace(t))]
	return c, ok
}

// Column returns the PHI column schema.table.name, if configured.
func (c *Config) Column(schema, table, name string) (Column, bool) {
	cols, ok := c.PHI[schema+"."+table]
	if !ok {
		return Column{}, false
	}
	col, ok := cols[name]
	return col, ok
}

// Relations returns the configured PHI relations ("schema.table"), sorted.
func (c *Config) Relations() []string {
	out := make([]string, 0, len(c.PHI))
	for r := range c.PHI {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// Columns returns every PHI column sorted by identity.
func (c *Config) Columns() []Column {
	var out []Column
	for _, cols := range c.PHI {
		for _, col := range cols {
			out = append(out, col)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ident() < out[j].Ident() })
	return out
}

// KeyNames returns the distinct key names with the columns that use each.
func (c *Config) KeyNames() map[string][]Column {
	out := map[string][]Column{}
	for _, col := range c.Columns() {
		out[col.Key] = append(out[col.Key], col)
	}
	return out
}

// defaultInstance is the host name, or "phiproxy" when it cannot be read.

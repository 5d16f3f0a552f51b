package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// The catalog overlay (docs/sql-support.md, "Catalog introspection"): views
// in schema OverlaySchema through which catalog reads see each PHI column
// with its logical type, and no envelope constraint. This file builds its
// DDL; proxy/phi installs and checks it over the catalog connection.

// Catalog overlay modes (catalog_overlay in the config file).
const (
	// OverlayInstall: the proxy creates or updates the overlay at start,
	// reload and catalog refresh when the catalog role may, and uses it
	// when it is current.
	OverlayInstall = "install"
	// OverlayUse: the proxy only uses an overlay a DBA installed
	// (phiproxy overlay install) when it is current.
	OverlayUse = "use"
	// OverlayOff: catalog reads are sent as written.
	OverlayOff = "off"
)

// OverlaySchema is the schema that holds the overlay. It is not the
// phiproxy schema of docs/configuration.md: that one holds the verifier
// lookup, and the overlay's schema is granted to PUBLIC.
const OverlaySchema = "phiproxy_overlay"

// overlayVersion changes whenever the overlay's DDL does, so that an
// overlay installed by another phiproxy version is replaced.
const overlayVersion = 2

// OverlayEntry is one PHI column as the overlay presents it: the column
// (attrelid, attnum) and its logical type's OID and atttypmod.
type OverlayEntry struct {
	RelOID  uint32
	Attnum  int16
	TypeOID uint32
	Typmod  int32
}

var logicalTypeOIDs = map[string]uint32{
	"text": pgtype.TextOID, "varchar": pgtype.VarcharOID, "bpchar": pgtype.BPCharOID,
	"date": pgtype.DateOID, "timestamp": pgtype.TimestampOID, "timestamptz": pgtype.TimestamptzOID,
	"int4": pgtype.Int4OID, "int8": pgtype.Int8OID, "numeric": pgtype.NumericOID,
	"bool": pgtype.BoolOID, "uuid": pgtype.UUIDOID, "jsonb": pgtype.JSONBOID,
}

// OverlayEntries lists the overlay's rows for cfg on cat, sorted: every
// configured column that exists as bytea.
func OverlayEntries(cfg *Config, cat *Catalog) []OverlayEntry {
	var out []OverlayEntry
	for _, c := range cfg.Columns() {
		r, ok := cat.Relation(c.Schema, c.Table)
		if !ok || c.Observed() {
			continue
		}
		a, ok := r.Column(c.Name)
		if !ok || a.TypeName != "bytea" {
			continue
		}
		t, err := ParseLogicalType(c.Type)
		oid := logicalTypeOIDs[t.Name]
		if err != nil || oid == 0 {
			continue
		}
		out = append(out, OverlayEntry{RelOID: r.OID, Attnum: a.Num, TypeOID: oid, Typmod: t.Typmod()})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].RelOID != out[j].RelOID {
			return out[i].RelOID < out[j].RelOID
		}
		return out[i].Attnum < out[j].Attnum
	})
	return out
}

// OverlayMarker is the comment the overlay's views carry: the overlay's
// version and the server's (information_schema.columns is copied from the
// server it runs on).
func OverlayMarker(serverVersionNum int) string {
	return fmt.Sprintf("phiproxy catalog overlay %d for server_version_num %d", overlayVersion, serverVersionNum)
}

// OverlayStatusSQL reads server_version_num, the markers of the overlay's
// three views (NULL when missing) and the database.
const OverlayStatusSQL = `SELECT pg_catalog.current_setting('server_version_num')::int4,
  pg_catalog.obj_description(pg_catalog.to_regclass('` + OverlaySchema + `.pg_attribute'), 'pg_class'),
  pg_catalog.obj_description(pg_catalog.to_regclass('` + OverlaySchema + `.columns'), 'pg_class'),
  pg_catalog.obj_description(pg_catalog.to_regclass('` + OverlaySchema + `.pg_constraint'), 'pg_class'),
  pg_catalog.current_database()::text`

// OverlayEntriesSQL reads the overlay's rows, sorted as OverlayEntries.
const OverlayEntriesSQL = `SELECT attrelid, attnum, atttypid, atttypmod FROM ` + OverlaySchema + `.phi_columns ORDER BY attrelid, attnum`

// OverlayAttributesSQL lists pg_attribute's own columns in order: the
// overlay repeats them.
const OverlayAttributesSQL = `SELECT attname::text FROM pg_catalog.pg_attribute
WHERE attrelid = 'pg_catalog.pg_attribute'::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`

// OverlayColumnsDefSQL reads the definition of information_schema.columns;
// run it with search_path = pg_catalog, as the DDL is.
const OverlayColumnsDefSQL = `SELECT pg_catalog.pg_get_viewdef('information_schema.columns'::pg_catalog.regclass)`

// OverlayFunction is the overlay's function that returns pg_attribute's
// rows, with the rowtype of pg_catalog.pg_attribute.
const OverlayFunction = `"` + OverlaySchema + `"."attributes"()`

// overlayTypeCols are the pg_attribute columns a PHI column's logical type
// decides, with the expression that gives them (o: the overlay row, t: the
// logical type's pg_type row).
var overlayTypeCols = map[string]string{
	"atttypid":     "o.atttypid",
	"atttypmod":    "o.atttypmod",
	"attlen":       "t.typlen",
	"attbyval":     "t.typbyval",
	"attalign":     "t.typalign",
	"attstorage":   "t.typstorage",
	"attcollation": "t.typcollation",
}

// OverlayDDL returns the statements that install the overlay, to run in
// one transaction after SET LOCAL search_path = pg_catalog. attrs are
// pg_attribute's columns (OverlayAttributesSQL), columnsDef the body of
// the columns view (information_schema.columns' definition with its
// pg_attribute read replaced by OverlayFunction). Existing views and the
// function are replaced; the PHI map is written by OverlayDataSQL.
func OverlayDDL(attrs []string, columnsDef, marker string) []string {
	s := pgx.Identifier{OverlaySchema}.Sanitize()
	var fn, view []string
	for _, a := range attrs {
		q := pgx.Identifier{a}.Sanitize()
		if e, ok := overlayTypeCols[a]; ok {
			fn = append(fn, fmt.Sprintf("CASE WHEN o.attrelid IS NULL THEN a.%s ELSE %s END", q, e))
		} else {
			fn = append(fn, "a."+q)
		}
		if a == "attmissingval" {
			// A view cannot have an anyarray column: its text form.
			view = append(view, q+"::pg_catalog.text AS "+q)
		} else {
			view = append(view, q)
		}
	}
	quoted := "'" + strings.ReplaceAll(marker, "'", "''") + "'"
	return []string{
		"CREATE SCHEMA IF NOT EXISTS " + s,
		"CREATE TABLE IF NOT EXISTS " + s + `.phi_columns (attrelid pg_catalog.oid NOT NULL, attnum pg_catalog.int2 NOT NULL,
  atttypid pg_catalog.oid NOT NULL, atttypmod pg_catalog.int4 NOT NULL, PRIMARY KEY (attrelid, attnum))`,
		"DROP VIEW IF EXISTS " + s + ".columns, " + s + ".pg_attribute, " + s + ".pg_constraint",
		"DROP FUNCTION IF EXISTS " + OverlayFunction,
		// A SQL-standard body is bound at creation (no search_path at run
		// time) and is inlined into the caller's plan: a read by attrelid
		// stays an index scan of pg_attribute. Only a bytea column that is
		// not dropped takes a logical type.
		"CREATE FUNCTION " + OverlayFunction + ` RETURNS SETOF pg_catalog.pg_attribute
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
SELECT ` + strings.Join(fn, ",\n  ") + `
FROM pg_catalog.pg_attribute a
LEFT JOIN (` + s + `.phi_columns o JOIN pg_catalog.pg_type t ON t.oid = o.atttypid)
  ON o.attrelid = a.attrelid AND o.attnum = a.attnum
  AND a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype AND NOT a.attisdropped;
END`,
		// security_invoker: privileges are checked as on pg_attribute itself.
		"CREATE VIEW " + s + ".pg_attribute WITH (security_invoker = true) AS SELECT " + strings.Join(view, ", ") + " FROM " + OverlayFunction,
		// As information_schema.columns, not security_invoker: it reads
		// the catalogs as its owner and filters rows by the caller's
		// privileges itself.
		"CREATE VIEW " + s + ".columns AS " + columnsDef,
		// pg_constraint without the envelope CHECK constraints phiproxy
		// encrypt installs on the PHI columns (crypto.EnvelopeCheckSQL): a
		// schema diff (TypeORM synchronize, MikroORM's schema generator)
		// would otherwise plan to drop what the plaintext twin does not
		// have. They stay in force; only reads through phiproxy skip them.
		"CREATE VIEW " + s + `.pg_constraint WITH (security_invoker = true) AS SELECT c.* FROM pg_catalog.pg_constraint c
WHERE NOT (c.contype = 'c' AND c.conname OPERATOR(pg_catalog.~~) 'phiproxy\_%\_envelope'
  AND pg_catalog.cardinality(c.conkey) = 1
  AND EXISTS (SELECT FROM ` + s + `.phi_columns o WHERE o.attrelid = c.conrelid AND o.attnum = c.conkey[1]))`,
		"COMMENT ON VIEW " + s + ".pg_attribute IS " + quoted,
		"COMMENT ON VIEW " + s + ".columns IS " + quoted,
		"COMMENT ON VIEW " + s + ".pg_constraint IS " + quoted,
		"GRANT USAGE ON SCHEMA " + s + " TO PUBLIC",
		"GRANT SELECT ON " + s + ".phi_columns, " + s + ".pg_attribute, " + s + ".columns, " + s + ".pg_constraint TO PUBLIC",
	}
}

// OverlayDataSQL returns the statements that replace the overlay's PHI map
// with entries.
func OverlayDataSQL(entries []OverlayEntry) []string {
	s := pgx.Identifier{OverlaySchema}.Sanitize()
	out := []string{"DELETE FROM " + s + ".phi_columns"}
	if len(entries) == 0 {
		return out
	}
	var vals []string
	for _, e := range entries {
		vals = append(vals, fmt.Sprintf("(%d, %d, %d, %d)", e.RelOID, e.Attnum, e.TypeOID, e.Typmod))
	}
	return append(out, "INSERT INTO "+s+".phi_columns (attrelid, attnum, atttypid, atttypmod) VALUES "+strings.Join(vals, ", "))
}

// OverlayLockSQL serializes overlay installs of instances sharing a
// database (a transaction-scoped advisory lock).
const OverlayLockSQL = `SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('` + OverlaySchema + `'))`

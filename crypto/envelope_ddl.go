package crypto

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

// EnvelopeCheckName is the name of the CHECK constraint that guards col. It
// fits in PostgreSQL's 63-byte identifier limit: long column names are
// shortened and suffixed with a hash of the full identity so that names stay
// unique and stable.
func EnvelopeCheckName(col config.Column) string {
	name := "phiproxy_" + col.Name + "_envelope"
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(col.Ident()))
	suffix := "_" + hex.EncodeToString(sum[:4]) + "_envelope"
	base := "phiproxy_" + col.Name
	base = base[:63-len(suffix)]
	for !utf8.ValidString(base) { // don't split a UTF-8 sequence
		base = base[:len(base)-1]
	}
	return base + suffix
}

// EnvelopeCheckSQL returns the DDL that makes PostgreSQL itself refuse a
// non-NULL value in col that does not start with the envelope header, so
// plaintext written around the proxy fails with 23514.
//
// The constraint is added NOT VALID: it is enforced for every new INSERT and
// UPDATE at once, but adding it takes only a brief lock and does not scan
// existing rows. Once `phiproxy encrypt` has converted existing data, run
// EnvelopeValidateSQL, which scans under a SHARE UPDATE EXCLUSIVE lock that
// does not block reads or writes.
//
// The test is a bytea LIKE with the pattern EnvelopeHeader "%" (none of
// the header's bytes is '_' or the escape '\'): a NULL value makes it NULL, which a
// CHECK accepts. It is written as an E'…' literal so that the statement
// means the same under standard_conforming_strings = off. PostgreSQL
// prepares every CHECK expression again for each statement execution, so
// the smallest expression is the cheapest: this one cost about half of
// the earlier `col IS NULL OR substring(col from 1 for 3) =
// decode('504801', 'hex')` per written row (docs/performance.md).
func EnvelopeCheckSQL(col config.Column) string {
	return fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s LIKE E'\\\\x%x25'::bytea) NOT VALID",
		pgx.Identifier{col.Schema, col.Table}.Sanitize(),
		pgx.Identifier{EnvelopeCheckName(col)}.Sanitize(),
		pgx.Identifier{col.Name}.Sanitize(), EnvelopeHeader)
}

// EnvelopeValidateSQL validates the constraint EnvelopeCheckSQL added,
// checking rows that existed before it.
func EnvelopeValidateSQL(col config.Column) string {
	return fmt.Sprintf("ALTER TABLE %s VALIDATE CONSTRAINT %s",
		pgx.Identifier{col.Schema, col.Table}.Sanitize(), pgx.Identifier{EnvelopeCheckName(col)}.Sanitize())
}

// Package codec converts the values of PHI columns between what a client
// sends or receives and the canonical plaintext bytes that package crypto
// encrypts.
//
// It is pure (no sockets, keys or clock: deps_test.go) and lives at the top
// level because more than the proxy uses it: package column builds the one
// column encoder on it (value → canonical plaintext → envelope and back)
// that the proxy and the encrypt and reencrypt commands share.
//
// Data flow. On the way in, a Bind parameter or a literal bound for a PHI
// column arrives in the client's format (text or binary) for the column's
// logical type (config.CanonicalType names). Canonical decodes it with
// PostgreSQL's own input rules and returns the canonical text form — the
// text PostgreSQL itself outputs for that value with default settings
// (DateStyle ISO, TimeZone UTC, bytea_output hex, extra_float_digits 1). The
// proxy encrypts those bytes and sends them upstream as bytea, using the
// helpers in bytea.go (ByteaLiteral for the simple protocol, EncodeBytea for
// Bind). On the way out, the proxy decrypts a bytea value back to the
// canonical form and Encode produces the client's format: text as stored
// (timestamptz converted to the session's TimeZone), or the type's binary
// wire format.
//
// Canonicalising before encryption makes deterministic equality stable:
// '1980-1-2' and '1980-01-02' are the same date and encrypt to the same
// ciphertext. Canonical forms per type:
//
//	text, varchar  the bytes, which must be valid UTF-8 without NUL (the
//	bpchar         server encoding phiproxy supports is UTF8; the session's
//	               client_encoding must be UTF8 too)
//	int4, int8     decimal, no sign for zero, no leading zeros: " 007" → "7"
//	bool           "t" or "f" ("yes", "on", "1", "TRUE" → "t")
//	uuid           lower-case 8-4-4-4-12: "{A0EEBC99…}" → "a0eebc99-…"
//	numeric        PostgreSQL's numeric_out without trailing fraction zeros
//	               (trim_scale: "1.50" → "1.5", "1.0" → "1"), so that equal
//	               values are equal plaintexts; exponents are expanded
//	               ("1e3" → "1000", "1.5e-3" → "0.0015"), "-0" → "0", "NaN",
//	               "Infinity", "-Infinity"
//	date           ISO "YYYY-MM-DD" with " BC" for BC dates, "infinity",
//	               "-infinity"
//	timestamp      "YYYY-MM-DD HH:MM:SS[.ffffff]" (fraction without trailing
//	               zeros), " BC", infinities
//	timestamptz    the same in UTC with "+00": the canonical form is fixed in
//	               UTC, whatever the writer's TimeZone, so that equal
//	               instants are equal plaintexts in every session
//	jsonb          PostgreSQL's jsonb output: object keys sorted by length
//	               then bytes, duplicate keys resolved to the last value,
//	               ", " and ": " separators, numbers as numeric above
//	               ({"a":1.0} → {"a": 1}: jsonb equality compares numbers
//	               as numeric)
//
// A logical type may carry a type modifier (varchar(n), bpchar(n),
// numeric(p,s), timestamp(p), timestamptz(p)): typmod.go applies it as
// PostgreSQL does on assignment, explicit cast and comparison, and the
// canonical forms become those PostgreSQL stores (bpchar(n) padded to n,
// numeric(p,s) with exactly s fraction digits).
//
// Accepted text input is PostgreSQL's for every type except the date/time
// types, where the codec accepts the unambiguous ISO 8601 subset (year of
// at least four digits, "T" or space before the time, numeric offsets, Z,
// UTC and GMT, BC/AD, infinity, epoch) and refuses the rest with 22007 and a
// hint, rather than guess at DateStyle-dependent forms ("1/2/1980"), named
// time zones, or session-dependent ones ("now", "today"). Input without an
// offset for timestamptz is read in Codec.TimeZone (UTC by default).
// The differential tests in this package compare every accepted input with
// what PostgreSQL 15 outputs for it.
//
// NULL never reaches the codec: the proxy forwards SQL NULL as NULL,
// unencrypted, in both directions (a NULL array element stays a NULL
// element).
//
// Errors are *pgerr.Error with PostgreSQL's SQLSTATEs (22P02, 22007, 22008,
// 22003, 22021, 22P03). Their messages name the type, never the value; the
// caller adds the column with WithColumn.
//
// Concurrency: Codec is a small immutable value; the package has no state.
// Array helpers build a pgtype.Map per call, because a Map is not safe for
// concurrent use and building one is cheap next to a network round trip.
package codec

// Package column is phiproxy's one column encoder: it turns a value of a
// PHI column between the form a client sends or receives and the envelope
// PostgreSQL stores, and wipes every plaintext buffer it makes.
//
// Data flow. Sealing (Encoder.AppendSeal, AppendSealString, SealArray): a
// value in a client format (text or binary, with the type OID the client
// declared for a parameter, and the explicit cast and assignment that
// PostgreSQL would apply: Input) → package codec's canonical plaintext
// for the column's logical type and modifier → package crypto's envelope
// under the column's key. Opening (Encoder.AppendOpen, after
// DecodeStored for a bytea value as the server sends it): envelope →
// canonical plaintext → the client's format (timestamptz in the
// session's TimeZone, which Encoder.Codec carries).
//
// Who uses it: the proxy for literals (simple protocol), Bind parameters,
// DataRows and COPY in both directions and formats; the encrypt and
// reencrypt commands, and the search index, for the same bytes. Because
// there is one encoder, deterministic equality holds across all of them:
// the same value encrypts to the same envelope whichever path wrote it.
//
// Plaintext hygiene. Canonical plaintexts are built in the Encoder's own
// scratch (never in a caller's buffer, so a grown or abandoned output
// cannot keep one) and cleared before every return, error or not; when
// the scratch has to grow, the old one is cleared before it is dropped.
// Array elements that the text parser unescaped into copies are cleared
// too. Decrypted plaintexts (Tink returns a fresh slice) are cleared once
// encoded. What stays is the caller's: its input and the client-format
// output it asked for.
//
// Concurrency: an Encoder keeps scratch between calls and is not safe for
// concurrent use; the proxy has one per session direction. It is a
// leaf over codec and crypto: no sockets, no plans.
package column

// Package crypto holds phiproxy's keys and does its column encryption, on
// Tink primitives only (github.com/tink-crypto/tink-go/v2): AES-256-GCM for
// randomized columns, AES-SIV for deterministic ones, Ed25519 for audit
// checkpoints. It never touches a socket or PostgreSQL.
//
// # Keys at rest
//
// Every key name of the config's phi map (config Column.Key: a column's
// identity schema.table.column, or a name shared by columns that must
// compare) has a Tink keyset in keys.dir, and the instance has one
// audit-signing keyset. Each is one file, written 0600 by temp file, fsync
// and rename, holding some metadata (key name, mode, creation and
// retirement times: no secrets) and the keyset encrypted under the KEK with
// keyset.WriteWithAssociatedData. The associated data binds the file to its
// purpose, key name and mode, so a renamed or edited file does not load.
// Cleartext keysets exist only in memory.
//
// The KEK (OpenKEK) is a Tink AEAD keyset in a local file ("file:PATH",
// refused unless mode 0600 or stricter and owned by the running user; it is
// the one cleartext key, created by InitFileKEK) or a Vault Transit key
// ("hcvault://HOST[:PORT]/MOUNT/keys/NAME" via tink-go-hcvault; the token
// comes from VAULT_TOKEN, see Env).
//
// # Data flow
//
//	phiproxy keys ...  ──► Store ──► keyset files (encrypted under the KEK)
//	                                      │
//	proxy start/SIGHUP ──► Open / Keyring.Reload (all or nothing)
//	                                      │ atomic pointer swap
//	proxy session ──► Keyring.Cipher(col.Key) ──► column.Encoder ──► Cipher.AppendEncrypt / Decrypt
//	audit ──► Keyring.Signer ──► Signer.Sign;  auditors ──► NewVerifier(export-public)
//
// A Store changes keyset files (create, rotate, retire, list) under a lock
// on keys.dir. A Keyring is what the proxy holds: an immutable snapshot of
// one Cipher per key name plus the Signer behind an atomic pointer, so the
// per-value path takes no lock. Reload builds a new snapshot and swaps it
// in only when every keyset loaded; a Cipher taken before a reload keeps
// working.
//
// # Envelope
//
// A ciphertext is EnvelopeHeader ("PH", version byte 1), then Tink's
// output, which starts with 0x01 and the 4-byte id of the key that made
// it (DESIGN.md §4). EnvelopeHeader is the header's one definition: the
// Recognizer's anchors, the text forms and the CHECK constraint that makes
// PostgreSQL refuse plaintext in an encrypted column (EnvelopeCheckSQL,
// EnvelopeValidateSQL) are derived from it. The
// associated data is the key name, so a value copied into a column with
// another key name does not decrypt. A Recognizer (Keyring.Recognizer)
// is the proxy's safety net: it finds envelopes of the loaded keys in a
// value in every form PostgreSQL prints bytes in, and redacts them from
// server messages; IsEnvelope, HasEnvelopeHeader and IsTextEnvelope are
// header-only shape checks, not for the safety net (they cannot tell an
// envelope from innocent bytes that start the same way). EnvelopeKeyID
// and KeyPrefix let operators find the rows still under a key before they
// retire it.
//
// # Errors and redaction
//
// Errors name key names, columns and key ids, never values or key bytes.
// Decrypt failures are *pgerr.Error with SQLSTATE XX001 wrapping a
// *DecryptError that says why (not an envelope, unknown key id, retired
// key, does not authenticate). Every type that holds keys or plaintext
// (Keyring, Cipher, Signer, KEK, Store, Plaintext, Env) logs and prints as
// REDACTED.
package crypto

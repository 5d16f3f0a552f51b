// Package migrate converts the existing data of a PHI column online:
// Encrypt turns a plaintext column into envelopes, Decrypt turns it back,
// Reencrypt moves envelopes to the column's primary key after a rotation.
// The `phiproxy encrypt`, `decrypt` and `reencrypt` commands drive it.
//
// Data flow (Encrypt; Decrypt is the mirror image):
//
//	setup (one transaction): shadow column <col>__phiproxy_enc bytea +
//	    a trigger that sets the shadow to NULL whenever the plaintext changes
//	backfill: keyset pagination over the primary key; each batch reads
//	    (pk, xmin, col::text), seals the values with package column's
//	    encoder (the proxy's own), and writes the shadow only where xmin is
//	    unchanged, so a row written meanwhile is left for the catch-up
//	catch-up: the same pass again until few rows have a NULL shadow and a
//	    non-NULL plaintext
//	swap (one short transaction under lock_timeout, retried with backoff):
//	    LOCK, last catch-up, drop trigger and function, drop the plaintext
//	    column, rename the shadow, add the envelope CHECK (NOT VALID)
//	validate: VALIDATE CONSTRAINT (no lock against reads or writes)
//
// All state lives in the database, under deterministic names, so a rerun
// after an interruption anywhere (SIGINT, kill -9, a lost connection)
// finds the phase it was in and resumes; every step is idempotent. No key
// ever reaches PostgreSQL: the trigger only clears. Messages and errors
// name relations, columns and key ids, never a value.
package migrate

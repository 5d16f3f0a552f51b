// Package audit is phiproxy's audit trail (DESIGN §8; docs/audit.md for
// auditors): the Event, the hash-chained file sink with signed
// checkpoints and strict group commit (Trail), reading a trail back
// (Reader), and the Kafka export fed from the file spool.
//
// The proxy calls into this package; it never imports the proxy. An Event
// holds who, what relation and column, which decision and outcome — a
// normalized query and a fingerprint, never a literal, a parameter or a
// row value.
//
// # Files
//
// A trail is a directory of JSON-lines files named
// audit-<first seq, 20 digits>.jsonl, one writer (instance) per directory,
// read in name order. Each line is one Event. Its hash is SHA-256 over its
// canonical bytes: the line without its final `,"hash":"<64 hex>"` member
// (so the canonical bytes are a JSON object ending in "}"), which include
// prev, the hash of the event before it (64 zeros for the trail's first
// event). The chain continues across files. Every
// checkpoint_every events, checkpoint_interval and at a clean stop the
// writer appends a checkpoint event whose signature (Tink Ed25519, base64)
// is over CheckpointMessage(instance, seq, prev).
package audit

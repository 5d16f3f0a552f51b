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
// is over CheckpointMessage(instance, seq, prev) (Event.Sign makes it).
//
// # Reading a trail back
//
// Verify walks the files once and reports the first place where the chain,
// a file name or a checkpoint signature does not hold; a head file (the
// writer's) or a state file (the auditor's memory of the last checkpoint
// it verified) also catch a trail cut short. Scan streams the events a
// Filter selects (a Matcher looks at a line's text before decoding it);
// TailSegments and a Follower serve `audit tail [-f]`. All of them keep a
// flat memory whatever the trail's size.
package audit

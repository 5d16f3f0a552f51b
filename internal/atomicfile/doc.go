// Package atomicfile replaces a file so that a crash leaves either the old
// or the new content, never a torn one: the data goes to a temporary file
// in the same directory, is synced, renamed over the target, and the
// directory is synced so that the rename itself is durable.
//
// Keyset files (crypto), the audit head file and the verifier's state file
// (audit), the Kafka export state (audit) and the lockdown state file
// (policy) are written through it. It depends on the standard library only.
package atomicfile

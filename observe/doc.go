// Package observe keeps the coverage records of observe mode (enforce:
// observe in the phi: map; docs/observe.md) and renders them as the
// report of `phiproxy observe report`.
//
// The proxy plans every statement that touches an observed column with
// the same rewriter as an enforced one, as if the column were already
// encrypted, and forwards it unchanged. What the plan says — the
// statement would work (and how: literal slots, parameters, result
// columns) or would be refused (SQLSTATE, message, hint) — is a Record,
// one per statement fingerprint (Store: bounded, counts, first and last
// seen, applications and users), written atomically to
// state_dir/observe.json (File). Records hold names and normalized text,
// never a value, as audit events do.
//
// The report (Report, WriteTable, WriteJSON, WriteCSV, WriteHTML) puts a
// summary first and the records that would be refused before those that
// would work.
package observe

// Package check compares a phiproxy config and its keysets with the live
// schema of the catalog database and reports what does not fit, as
// findings a DBA can act on (`phiproxy check`, docs/operations.md,
// "Checking the config against the database").
//
// Run reads pg_catalog (through the catalog snapshot of package config and
// a few queries of its own) and samples the first bytes of PHI values; it
// only reads. The caller passes in what needs the keys or the proxy's view
// of the overlay: the keysets (crypto.Store.List) and the overlay's and
// event trigger's state, so that this package stays below cmd and beside
// proxy (cmd → check → {config, crypto}). Each Finding has a severity, the
// object it is about, what is wrong and how to fix it; no finding ever holds
// a value, only names, counts and key ids.
//
// check is its own room, not part of config, because it needs crypto (the
// envelope header and CHECK constraint, keyset infos) and crypto imports
// config.
package check

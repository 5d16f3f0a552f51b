// Package pgerr is the SQLSTATE-carrying error type every phiproxy package
// uses to refuse a statement or a connection.
//
// A Code is a struct, not a string, so a bare message cannot be passed where a
// SQLSTATE is expected. Errors are created with New or Newf, wrapped with %w,
// found with errors.As, and turned into a PostgreSQL ErrorResponse in exactly
// one place in package proxy. Messages name relations and columns, never
// values; a Hint says what would work instead.
//
// Codes written in phiproxy's source are the variables of this package (or
// MakeCode, which panics on a typo). A SQLSTATE that arrives from outside,
// in an upstream ErrorResponse or from a client, is parsed with ParseCode,
// which can fail and never panics; when it fails the caller uses a
// documented fallback: Internal (XX000) for an error that carries no usable
// code, ProtocolViolation (08P01) when the message that should have carried
// it is malformed.
//
// This is a leaf package: it imports nothing of phiproxy's.
package pgerr

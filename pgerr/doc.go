// Package pgerr is the SQLSTATE-carrying error type every phiproxy package
// uses to refuse a statement or a connection.
//
// A Code is a struct, not a string, so a bare message cannot be passed where a
// SQLSTATE is expected. Errors are created with New or Newf, wrapped with %w,
// found with errors.As, and turned into a PostgreSQL ErrorResponse in exactly
// one place in package proxy. Messages name relations and columns, never
// values; a Hint says what would work instead.
//
// This is a leaf package: it imports nothing of phiproxy's.
package pgerr

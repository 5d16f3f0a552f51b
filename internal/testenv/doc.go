// Package testenv holds what the tests of several packages share: a
// PostgreSQL cluster for a package's TestMain (started at once with the app
// role, or lazily on first use), pgx connections and servers that end with
// the test, polling until a condition holds (Eventually), a buffer a
// logger or a child process writes while the test reads it,
// bench/phi.sql's transaction for the PHI benchmarks (PHIWorkload), and
// the wire protocol by hand: an accept loop, a scripted fake server for
// what a real PostgreSQL never answers, a hijacked client connection and
// a round trip to ReadyForQuery on it (wire.go); and an HTTP GET with an
// Authorization header for the admin API's tests (HTTPGet).
//
// Only tests import it (TestOnlyTestsImportIt checks); it depends on the
// standard library, pgcluster and pgx, so that any package's tests can use
// it without an import cycle. A server to run is taken as an interface for
// the same reason: proxy's own tests import this package.
package testenv

// Package pgcluster starts throwaway PostgreSQL clusters: initdb into a
// temporary directory, a free loopback port, scram-sha-256 authentication,
// TLS with a CA and server certificate generated in-process, and removal of
// everything on Stop.
//
// It serves the integration tests (one cluster per test package run), the
// benchmark runner and `phiproxy demo`. PostgreSQL refuses to run as root,
// so when the process is root the server runs as the unprivileged
// "postgres" system user and the temporary directories are made theirs.
// Binaries come from `pg_config --bindir` (PostgreSQL 15 expected), or from
// PGCLUSTER_BINDIR when set.
package pgcluster

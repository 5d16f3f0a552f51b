// Package integration holds phiproxy's end-to-end tests: one throwaway
// PostgreSQL 15 cluster per package run (pgcluster), the real phiproxy
// binary started with `phiproxy serve`, and real clients — pgx, psql,
// pgbench, JDBC, node-postgres, psycopg, and the ORMs of orm_test.go
// (programs in orm/) — whose results through the proxy are compared with
// the same statements sent to PostgreSQL directly.
//
// Everything the proxy writes (stdout, stderr) is captured so canary tests
// can prove that no PHI value ever appears in it.
package integration

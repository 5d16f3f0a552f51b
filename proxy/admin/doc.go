// Package admin is phiproxy's admin HTTP server and its Prometheus
// metrics (DESIGN §11 admin: listen, token_file; docs/operations.md).
//
// Server serves, on admin.listen (loopback by default, TLS with
// admin.cert/key):
//
//	/healthz  200 while the process runs; no token
//	/readyz   200 when the upstream answers a TCP dial, the keys are
//	          loaded and the catalog was read within admin.catalog_max_age;
//	          503 otherwise, with the failing checks (JSON)
//	/metrics  the Prometheus text format, from Metrics' own registry
//
// Every endpoint but /healthz needs "Authorization: Bearer TOKEN", TOKEN
// being the content of admin.token_file (a file only its owner can read,
// as the file KEK); a missing or wrong token gets 401. The comparison is
// in constant time over SHA-256 digests, so neither the token's bytes nor
// its length leak through timing.
//
// Metrics counts what flows through phiproxy without ever holding a
// value or SQL text: sessions through proxy.WithSessionHook, the PHI
// statement lifecycle as a phi.Observer (phi.WithObserver; without
// metrics nothing is observed and the hot path is unchanged), and at each
// scrape the catalog version and age and the plan cache's lookups read
// from phi.Proxy.Status. Label values come from fixed sets (actions,
// outcomes, SQLSTATEs phiproxy refuses with, true/false): series stay
// bounded whatever the workload. It registers on its own
// prometheus.Registry, never the global default one.
package admin

#!/usr/bin/env bash
# Runs the relay benchmark: pgbench direct vs through phiproxy vs through
# PgBouncer (session mode) against one throwaway PostgreSQL 15 cluster, and
# prints a table with ratios to direct. Usage: bench/run.sh [runner flags]
#   -duration 10s   seconds per pgbench run
#   -scale 10       pgbench -i scale
#   -workload relay|phi  relay: pgbench -S direct/phiproxy/PgBouncer;
#                       phi: bench/phi.sql direct (plaintext) / phiproxy pass-through / phiproxy with PHI,
#                       and bench/phi_ciphertext.sql directly on the encrypted table ("cipher")
#   -targets direct,phiproxy,pgbouncer  (relay) add floor-goroutine,floor-epoll,floor-epoll-raw for the
#                       bare Go byte relays of bench/runner/floor.go
#   -repeat 3           interleaved rounds, per-cell medians
#   -rows 10000         patients rows (phi)
# Every table also shows the ratio to PgBouncer (issue 3's target) and the CPU time per
# transaction of the proxy and of PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/phiproxy ./cmd/phiproxy
go run ./bench/runner -phiproxy bin/phiproxy "$@"

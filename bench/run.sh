#!/usr/bin/env bash
# Runs the relay benchmark: pgbench direct vs through phiproxy vs through
# PgBouncer (session mode) against one throwaway PostgreSQL 15 cluster, and
# prints a table with ratios to direct. Usage: bench/run.sh [runner flags]
#   -duration 10s   seconds per pgbench run
#   -scale 10       pgbench -i scale
#   -workload relay|phi  relay: pgbench -S direct/phiproxy/PgBouncer;
#                       phi: bench/phi.sql direct (plaintext) / phiproxy pass-through / phiproxy with PHI
#   -rows 10000         patients rows (phi)
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/phiproxy ./cmd/phiproxy
go run ./bench/runner -phiproxy bin/phiproxy "$@"

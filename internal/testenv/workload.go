package testenv

import (
	"context"
	"math/rand/v2"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// PHIWorkload is bench/phi.sql's transaction: a point select by id
// returning both PHI columns, a lookup by the deterministic column, an
// insert and an update, on a table (id, ssn, diagnosis) whose rows 1..rows
// hold ssn 100000000+id. The benchmarks of the PHI path run it in process
// (proxy/phi) and under the profiler (bench/runner). One workload per
// table: it numbers the rows it inserts.
type PHIWorkload struct {
	table string
	rows  int
	rng   *rand.Rand
	next  int // the id of the last row inserted
}

// NewPHIWorkload returns the workload on table, whose ids run to rows.
func NewPHIWorkload(table string, rows int) *PHIWorkload {
	return &PHIWorkload{table: table, rows: rows, rng: rand.New(rand.NewPCG(1, 2)), next: rows}
}

// Run runs the transaction's four statements on conn (in its default query
// exec mode; with the simple protocol pgx inlines the values, as pgbench
// -M simple does).
func (w *PHIWorkload) Run(ctx context.Context, conn *pgx.Conn) error {
	var ssn, diag string
	var id int
	pid := 1 + w.rng.IntN(w.rows)
	dx := strconv.Itoa(1 + w.rng.IntN(1000000))
	w.next++
	if err := conn.QueryRow(ctx, "SELECT ssn, diagnosis FROM "+w.table+" WHERE id = $1", pid).Scan(&ssn, &diag); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, "SELECT id, diagnosis FROM "+w.table+" WHERE ssn = $1::text", strconv.Itoa(100000000+pid)).Scan(&id, &diag); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "INSERT INTO "+w.table+" (id, ssn, diagnosis) VALUES ($1, $2::text, $3::text)", w.next, strconv.Itoa(200000000+w.next), dx); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "UPDATE "+w.table+" SET diagnosis = $1::text WHERE id = $2", dx, pid)
	return err
}

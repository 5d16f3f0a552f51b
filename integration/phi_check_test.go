package integration

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/crypto"
)

// TestPHICheckConstraintRefusesPlaintext writes around the proxy: the
// envelope CHECK constraint of every PHI column refuses plaintext with
// 23514, while NULL and non-PHI columns are accepted.
func TestPHICheckConstraintRefusesPlaintext(t *testing.T) {
	phiFixture(t)
	conn := phiDirect(t)
	ctx := context.Background()
	for _, c := range phiColumns {
		t.Run(c.Ident()+" refuses plaintext", func(t *testing.T) {
			q := "INSERT INTO " + c.Table + " (" + c.Name + ") VALUES ($1::bytea)"
			_, err := conn.Exec(ctx, q, []byte("123-45-6789"))
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "23514" || pe.ConstraintName != crypto.EnvelopeCheckName(c) {
				t.Fatalf("%s: got %v, want 23514 from %s", q, err, crypto.EnvelopeCheckName(c))
			}
			// A header with another version is refused too.
			_, err = conn.Exec(ctx, q, []byte("PH\x02not an envelope"))
			if !errors.As(err, &pe) || pe.Code != "23514" {
				t.Fatalf("a wrong envelope version: got %v, want 23514", err)
			}
		})
	}
	if _, err := conn.Exec(ctx, "INSERT INTO patients (id, name, ssn, note) VALUES (1201, 'nulls', NULL, 'plain note')"); err != nil {
		t.Fatalf("NULL PHI and a non-PHI value around the proxy: %v", err)
	}
}

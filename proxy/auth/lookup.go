package auth

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Querier is what QueryLookup needs of the catalog connection: a
// *pgxpool.Pool, or a *pgx.Conn guarded against concurrent use.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// QueryLookup returns a LookupFunc that runs query with the role name as
// $1. The query returns rolname, rolpassword, rolvaliduntil and, optionally,
// a fourth boolean column rolcanlogin (true when absent). No row means no
// such role.
func QueryLookup(q Querier, query string) LookupFunc {
	return func(ctx context.Context, role string) (*Verifier, error) {
		rows, err := q.Query(ctx, query, role)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		if !rows.Next() {
			return nil, rows.Err()
		}
		var (
			name     string
			secret   pgtype.Text
			until    pgtype.Timestamptz
			canLogin = true
		)
		dest := []any{&name, &secret, &until}
		switch n := len(rows.FieldDescriptions()); n {
		case 3:
		case 4:
			dest = append(dest, &canLogin)
		default:
			return nil, fmt.Errorf("auth: auth.query returns %d columns, want rolname, rolpassword, rolvaliduntil[, rolcanlogin]", n)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("auth: auth.query: %w", err)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		v := &Verifier{Role: name, Secret: secret.String, CanLogin: canLogin}
		switch {
		case !until.Valid, until.InfinityModifier == pgtype.Infinity:
		case until.InfinityModifier == pgtype.NegativeInfinity:
			v.ValidUntil = &time.Time{}
		default:
			t := until.Time
			v.ValidUntil = &t
		}
		return v, nil
	}
}

package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/migrate"
)

// checkUnused refuses to retire key id of ref while any value of the
// columns that use the key is still encrypted under it: it counts them
// over catalog_dsn (a scan of each column). A database it cannot reach is
// a refusal too; --force is the way to retire regardless.
func checkUnused(ctx context.Context, env *cmdEnv, cfg *config.Config, ref crypto.Ref, id uint32) error {
	cols := cfg.KeyNames()[ref.Name()]
	if len(cols) == 0 {
		return nil // a keyset no column uses any more holds no value we can find
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, cfg.CatalogDSN)
	if err != nil {
		return runtimeError{fmt.Errorf("keys retire: cannot check that no value of %s uses key id %d: %w\n"+
			"pass --force to retire without the check (values still under the key are destroyed)", columnList(cols), id, err)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var left []string
	for _, c := range cols {
		n, err := migrate.CountUnderKey(ctx, conn, c, id)
		if err != nil {
			return runtimeError{fmt.Errorf("keys retire: %w", err)}
		}
		if n > 0 {
			left = append(left, fmt.Sprintf("%s: %d", c.Ident(), n))
		}
	}
	if len(left) > 0 {
		return findingsError{fmt.Errorf("keys retire: values are still encrypted under key id %d of %s (%s); run `phiproxy reencrypt --config %s` first, or pass --force to destroy them",
			id, ref, strings.Join(left, ", "), cfg.Path)}
	}
	fmt.Fprintf(env.stdout, "%s: no value of %s uses key id %d\n", ref, columnList(cols), id)
	return nil
}

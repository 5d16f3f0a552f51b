package auth

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// cluster is the package's one throwaway PostgreSQL 15, shared by every
// test that needs a server.
var cluster *pgcluster.Cluster

// Roles in the cluster and their passwords.
const (
	catalogRole     = "phiproxy_catalog"
	catalogPassword = "catalog-pw"
)

var passwords = map[string]string{
	"alice":        "alice-pw",
	"nologin_user": "nologin-pw",
	"expired_user": "expired-pw",
	"md5user":      "md5-pw",
	"md5only":      "md5only-pw",
}

// lookupFunctionSQL is the SECURITY DEFINER function shown in
// docs/configuration.md; TestLookupFunction checks that the docs and this
// stay the same.
const lookupFunctionSQL = `CREATE SCHEMA phiproxy;
CREATE FUNCTION phiproxy.user_lookup(username text)
RETURNS TABLE (rolname name, rolpassword text, rolvaliduntil timestamptz, rolcanlogin boolean)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog
AS $$
  SELECT a.rolname, a.rolpassword, a.rolvaliduntil, a.rolcanlogin
  FROM pg_catalog.pg_authid a
  WHERE a.rolname = username
$$;
REVOKE ALL ON FUNCTION phiproxy.user_lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA phiproxy TO phiproxy_catalog;
GRANT EXECUTE ON FUNCTION phiproxy.user_lookup(text) TO phiproxy_catalog;`

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{
		// PostgreSQL answers an md5 verifier with md5 only where pg_hba says
		// md5; md5only stays under scram-sha-256 on purpose.
		HBA: []string{"host all md5user 127.0.0.1/32 md5"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Stop()
	cluster = c
	setup := fmt.Sprintf(`
CREATE ROLE alice LOGIN PASSWORD '%s';
CREATE ROLE nologin_user NOLOGIN PASSWORD '%s';
CREATE ROLE expired_user LOGIN PASSWORD '%s' VALID UNTIL '2000-01-01';
CREATE ROLE nopass_user LOGIN;
CREATE ROLE forever LOGIN PASSWORD 'forever-pw' VALID UNTIL 'infinity';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD '%s';
CREATE ROLE md5only LOGIN PASSWORD '%s';
RESET password_encryption;
CREATE ROLE %s LOGIN PASSWORD '%s';
%s`, passwords["alice"], passwords["nologin_user"], passwords["expired_user"], passwords["md5user"],
		passwords["md5only"], catalogRole, catalogPassword, lookupFunctionSQL)
	if err := c.Exec(ctx, setup); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}
	return m.Run()
}

package pgcluster

import (
	"os"
	"path/filepath"
	"strings"
)

// WritePgpass writes a pgpass file in the cluster's directory that gives
// the superuser's password for any host, port and database, and returns
// its path: a catalog_dsn names no password (config refuses one), so a
// proxy in front of the cluster finds it through PGPASSFILE. The file is
// 0600, as libpq requires; Stop removes it with the rest of the cluster.
func (c *Cluster) WritePgpass() (string, error) {
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	line := "*:*:*:" + esc.Replace(c.SuperUser) + ":" + esc.Replace(c.SuperPassword) + "\n"
	path := filepath.Join(c.Dir, "pgpass")
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

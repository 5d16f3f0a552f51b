package config

import (
	"strings"
	"testing"
)

func TestCatalogOverlaySetting(t *testing.T) {
	c, err := Parse([]byte(minimal), "/etc/phiproxy/p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.CatalogOverlay != OverlayInstall {
		t.Errorf("default catalog_overlay = %q, want %q", c.CatalogOverlay, OverlayInstall)
	}
	for _, m := range []string{OverlayInstall, OverlayUse, OverlayOff} {
		c, err := Parse([]byte(minimal+"catalog_overlay: "+m+"\n"), "/etc/phiproxy/p.yaml")
		if err != nil || c.CatalogOverlay != m {
			t.Errorf("catalog_overlay: %s: %v, %q", m, err, c.CatalogOverlay)
		}
	}
	_, err = Parse([]byte(minimal+"catalog_overlay: always\n"), "/etc/phiproxy/p.yaml")
	if err == nil || !strings.Contains(err.Error(), "p.yaml:4:") || !strings.Contains(err.Error(), "catalog_overlay") {
		t.Errorf("catalog_overlay: always: %v, want an error naming line 4", err)
	}
}

// The overlay's function lists pg_attribute's columns in order, taking
// the type columns from the logical type; its view casts attmissingval
// (a view cannot have an anyarray column).
func TestOverlayDDL(t *testing.T) {
	ddl := strings.Join(OverlayDDL([]string{"attrelid", "atttypid", "attmissingval"}, "SELECT 1", "m'1"), ";\n")
	for _, want := range []string{
		"SELECT a.\"attrelid\",\n  CASE WHEN o.attrelid IS NULL THEN a.\"atttypid\" ELSE o.atttypid END,\n  a.\"attmissingval\"\n",
		`"attmissingval"::pg_catalog.text AS "attmissingval"`,
		`CREATE VIEW "phiproxy_overlay".columns AS SELECT 1`,
		`IS 'm''1'`,
		"security_invoker = true",
	} {
		if !strings.Contains(ddl, want) {
			t.Errorf("DDL lacks %q:\n%s", want, ddl)
		}
	}
	data := OverlayDataSQL([]OverlayEntry{{16384, 3, 25, -1}, {16384, 5, 1043, 15}})
	if len(data) != 2 || !strings.HasSuffix(data[1], "VALUES (16384, 3, 25, -1), (16384, 5, 1043, 15)") {
		t.Errorf("data = %q", data)
	}
}

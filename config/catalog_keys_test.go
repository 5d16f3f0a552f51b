package config

import (
	"context"
	"reflect"
	"testing"
)

// TestCatalogKeys checks which indexes count as keys: primary keys and
// unique indexes over NOT NULL plain columns that are valid and immediate,
// not partial, not on expressions, and not on a table with inheritance
// children; INCLUDE columns are not part of the key.
func TestCatalogKeys(t *testing.T) {
	conn := testDB(t)
	mustExec(t, conn, `
CREATE TABLE pk (gone int, id int PRIMARY KEY, code text NOT NULL UNIQUE, maybe text UNIQUE);
ALTER TABLE pk DROP COLUMN gone;
CREATE TABLE multi (a int, b int, c text, d int NOT NULL, PRIMARY KEY (b, a));
CREATE UNIQUE INDEX multi_d_incl ON multi (d) INCLUDE (c);
CREATE TABLE partial (id int NOT NULL, x text NOT NULL);
CREATE UNIQUE INDEX partial_id ON partial (id) WHERE id > 0;
CREATE UNIQUE INDEX partial_x ON partial (lower(x));
CREATE TABLE deferred (id int NOT NULL, CONSTRAINT deferred_id UNIQUE (id) DEFERRABLE);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child () INHERITS (parent);
CREATE TABLE parted (id int, region int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE nokey (id int);
`)
	cat, err := LoadCatalog(context.Background(), conn, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][][]int16{
		"pk":       {{2}, {3}},
		"multi":    {{2, 1}, {4}},
		"partial":  nil,
		"deferred": nil,
		"parent":   nil,
		"child":    nil,
		"parted":   {{1, 2}},
		"parted_1": {{1, 2}},
		"nokey":    nil,
	}
	for name, keys := range want {
		r, ok := cat.Relation("public", name)
		if !ok {
			t.Fatalf("relation %s missing", name)
		}
		if !reflect.DeepEqual(r.Keys, keys) {
			t.Errorf("%s: keys = %v, want %v", name, r.Keys, keys)
		}
	}
}

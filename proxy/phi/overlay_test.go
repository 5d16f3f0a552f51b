package phi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// Catalog introspection (issue 17, item 1): the queries ORMs and drivers
// send to learn column types, run through phiproxy on a PHI table and
// directly on its plaintext twin, must answer the same.

// introspectionQueries are the ORMs' and drivers' queries as their sources
// build them (placeholders bound inline). TBL is the table's name, TBLOID
// its OID.
var introspectionQueries = []struct{ name, sql string }{
	// activerecord/lib/active_record/connection_adapters/postgresql/
	// schema_statements.rb, column_definitions (Rails 7.1).
	{"ActiveRecord column_definitions", `SELECT a.attname, format_type(a.atttypid, a.atttypmod),
       pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.atttypid, a.atttypmod,
       c.collname, col_description(a.attrelid, a.attnum) AS comment,
       attidentity AS identity,
       attgenerated as attgenerated
  FROM pg_attribute a
  LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum
  LEFT JOIN pg_type t ON a.atttypid = t.oid
  LEFT JOIN pg_collation c ON a.attcollation = c.oid AND a.attcollation <> t.typcollation
 WHERE a.attrelid = '"TBL"'::regclass
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum`},
	// gorm.io/driver/postgres migrator.go, ColumnTypes: the three queries
	// AutoMigrate's AlterColumn decision reads.
	{"GORM ColumnTypes information_schema", `SELECT c.column_name, c.is_nullable = 'YES', c.udt_name, c.character_maximum_length, c.numeric_precision, c.numeric_precision_radix, c.numeric_scale, c.datetime_precision, 8 * typlen, c.column_default, pd.description, c.identity_increment FROM information_schema.columns AS c JOIN pg_type AS pgt ON c.udt_name = pgt.typname LEFT JOIN pg_catalog.pg_description as pd ON pd.objsubid = c.ordinal_position AND pd.objoid = (SELECT oid FROM pg_catalog.pg_class WHERE relname = c.table_name AND relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = c.table_schema)) where table_catalog = current_database() AND table_schema = CURRENT_SCHEMA() AND table_name = 'TBL' ORDER BY c.ordinal_position`},
	{"GORM ColumnTypes constraints", `SELECT c.column_name, constraint_type FROM information_schema.table_constraints tc JOIN information_schema.constraint_column_usage AS ccu USING (constraint_schema, constraint_catalog, table_name, constraint_name) JOIN information_schema.columns AS c ON c.table_schema = tc.constraint_schema AND tc.table_name = c.table_name AND ccu.column_name = c.column_name WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE') AND c.table_catalog = current_database() AND c.table_schema = CURRENT_SCHEMA() AND c.table_name = 'TBL' ORDER BY 1, 2`},
	{"GORM ColumnTypes format_type", `SELECT a.attname as column_name, format_type(a.atttypid, a.atttypmod) AS data_type
		FROM pg_attribute a JOIN pg_class b ON a.attrelid = b.oid AND relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = CURRENT_SCHEMA())
		WHERE a.attnum > 0 -- hide internal columns
		AND NOT a.attisdropped -- hide deleted columns
		AND b.relname = 'TBL' ORDER BY a.attnum`},
	// lib/sqlalchemy/dialects/postgresql/base.py, get_multi_columns
	// (SQLAlchemy 2.0), as compiled.
	{"SQLAlchemy get_columns", `SELECT pg_catalog.pg_attribute.attname AS name, pg_catalog.format_type(pg_catalog.pg_attribute.atttypid, pg_catalog.pg_attribute.atttypmod) AS format_type, (SELECT pg_catalog.pg_get_expr(pg_catalog.pg_attrdef.adbin, pg_catalog.pg_attrdef.adrelid) AS pg_get_expr_1 FROM pg_catalog.pg_attrdef WHERE pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid AND pg_catalog.pg_attrdef.adnum = pg_catalog.pg_attribute.attnum AND pg_catalog.pg_attribute.atthasdef) AS "default", pg_catalog.pg_attribute.attnotnull AS not_null, pg_catalog.pg_class.relname AS table_name, pg_catalog.pg_description.description AS comment, pg_catalog.pg_attribute.attgenerated AS generated FROM pg_catalog.pg_class LEFT OUTER JOIN pg_catalog.pg_attribute ON pg_catalog.pg_class.oid = pg_catalog.pg_attribute.attrelid AND pg_catalog.pg_attribute.attnum > 0 AND NOT pg_catalog.pg_attribute.attisdropped LEFT OUTER JOIN pg_catalog.pg_description ON pg_catalog.pg_description.objoid = pg_catalog.pg_attribute.attrelid AND pg_catalog.pg_description.objsubid = pg_catalog.pg_attribute.attnum JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace WHERE pg_catalog.pg_class.relkind = ANY (ARRAY['r', 'p', 'f', 'v', 'm']) AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid) AND pg_catalog.pg_namespace.nspname != 'pg_catalog' AND pg_catalog.pg_class.relname IN ('TBL') ORDER BY pg_catalog.pg_class.relname, pg_catalog.pg_attribute.attnum`},
	// sequelize src/dialects/postgres/query-generator.js, describeTableQuery.
	{"Sequelize describeTable", `SELECT pk.constraint_type as "Constraint",c.column_name as "Field", c.column_default as "Default",c.is_nullable as "Null", (CASE WHEN c.udt_name = 'hstore' THEN c.udt_name ELSE c.data_type END) || (CASE WHEN c.character_maximum_length IS NOT NULL THEN '(' || c.character_maximum_length || ')' ELSE '' END) as "Type", (SELECT array_agg(e.enumlabel) FROM pg_catalog.pg_type t JOIN pg_catalog.pg_enum e ON t.oid=e.enumtypid WHERE t.typname=c.udt_name) AS "special", (SELECT pgd.description FROM pg_catalog.pg_statio_all_tables AS st INNER JOIN pg_catalog.pg_description pgd on (pgd.objoid=st.relid) WHERE c.ordinal_position=pgd.objsubid AND c.table_name=st.relname) AS "Comment" FROM information_schema.columns c LEFT JOIN (SELECT tc.table_schema, tc.table_name, cu.column_name, tc.constraint_type FROM information_schema.TABLE_CONSTRAINTS tc JOIN information_schema.KEY_COLUMN_USAGE  cu ON tc.table_schema=cu.table_schema and tc.table_name=cu.table_name and tc.constraint_name=cu.constraint_name and tc.constraint_type='PRIMARY KEY') pk ON pk.table_schema=c.table_schema AND pk.table_name=c.table_name AND pk.column_name=c.column_name WHERE c.table_name = 'TBL' AND c.table_schema = 'public' ORDER BY c.ordinal_position`},
	// knex lib/dialects/postgres/index.js, columnInfo.
	{"knex columnInfo", `select * from information_schema.columns where table_name = 'TBL' and table_catalog = current_database() and table_schema = current_schema() order by ordinal_position`},
	// pgjdbc PgDatabaseMetaData.getColumns.
	{"JDBC getColumns", `SELECT * FROM (SELECT n.nspname,c.relname,a.attname,a.atttypid,a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS attnotnull,a.atttypmod,a.attlen,t.typtypmod,row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS attnum, nullif(a.attidentity, '') as attidentity,nullif(a.attgenerated, '') as attgenerated,pg_catalog.pg_get_expr(def.adbin, def.adrelid) AS adsrc,dsc.description,t.typbasetype,t.typtype  FROM pg_catalog.pg_namespace n  JOIN pg_catalog.pg_class c ON (c.relnamespace = n.oid)  JOIN pg_catalog.pg_attribute a ON (a.attrelid=c.oid)  JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid)  LEFT JOIN pg_catalog.pg_attrdef def ON (a.attrelid=def.adrelid AND a.attnum = def.adnum)  LEFT JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)  LEFT JOIN pg_catalog.pg_class dc ON (dc.oid=dsc.classoid AND dc.relname='pg_class')  LEFT JOIN pg_catalog.pg_namespace dn ON (dc.relnamespace=dn.oid AND dn.nspname='pg_catalog')  WHERE c.relkind in ('r','p','v','f','m') and a.attnum > 0 AND NOT a.attisdropped  AND n.nspname LIKE 'public' AND c.relname LIKE 'TBL' ) c WHERE true  ORDER BY nspname,c.relname,attnum`},
	// django/db/backends/postgresql/introspection.py, get_table_description.
	{"Django get_table_description", `
            SELECT
                a.attname AS column_name,
                NOT (a.attnotnull OR (t.typtype = 'd' AND t.typnotnull)) AS is_nullable,
                pg_get_expr(ad.adbin, ad.adrelid) AS column_default,
                CASE WHEN collname = 'default' THEN NULL ELSE collname END AS collation,
                a.attidentity != '' AS is_autofield,
                col_description(a.attrelid, a.attnum) AS column_comment
            FROM pg_attribute a
            LEFT JOIN pg_attrdef ad ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
            LEFT JOIN pg_collation co ON a.attcollation = co.oid
            JOIN pg_type t ON a.atttypid = t.oid
            JOIN pg_class c ON a.attrelid = c.oid
            JOIN pg_namespace n ON c.relnamespace = n.oid
            WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v')
                AND c.relname = 'TBL'
                AND n.nspname NOT IN ('pg_catalog', 'pg_toast')
                AND pg_catalog.pg_table_is_visible(c.oid)
            ORDER BY a.attnum
        `},
	// typeorm src/driver/postgres/PostgresQueryRunner.ts, loadTables.
	{"TypeORM loadTables", `SELECT columns.*, pg_catalog.col_description(('"' || table_catalog || '"."' || table_schema || '"."' || table_name || '"')::regclass::oid, ordinal_position) AS description, ('"' || "udt_schema" || '"."' || "udt_name" || '"')::"regtype" AS "regtype", pg_catalog.format_type("col_attr"."atttypid", "col_attr"."atttypmod") AS "format_type" FROM "information_schema"."columns" LEFT JOIN "pg_catalog"."pg_attribute" AS "col_attr" ON "col_attr"."attname" = "columns"."column_name" AND "col_attr"."attrelid" = ( SELECT "cls"."oid" FROM "pg_catalog"."pg_class" AS "cls" LEFT JOIN "pg_catalog"."pg_namespace" AS "ns" ON "ns"."oid" = "cls"."relnamespace" WHERE "cls"."relname" = "columns"."table_name" AND "ns"."nspname" = "columns"."table_schema" ) WHERE ("table_schema" = 'public' AND "table_name" = 'TBL') ORDER BY ordinal_position`},
	// typeorm PostgresQueryRunner.ts, loadTables' constraints: the
	// envelope CHECK constraints are not there, as on the twin.
	{"TypeORM constraints", `SELECT "ns"."nspname" AS "table_schema", "t"."relname" AS "table_name", "cnst"."conname" AS "constraint_name", pg_get_constraintdef("cnst"."oid") AS "expression", CASE "cnst"."contype" WHEN 'p' THEN 'PRIMARY' WHEN 'u' THEN 'UNIQUE' WHEN 'c' THEN 'CHECK' WHEN 'x' THEN 'EXCLUDE' END AS "constraint_type", "a"."attname" AS "column_name" FROM "pg_constraint" "cnst" INNER JOIN "pg_class" "t" ON "t"."oid" = "cnst"."conrelid" INNER JOIN "pg_namespace" "ns" ON "ns"."oid" = "cnst"."connamespace" LEFT JOIN "pg_attribute" "a" ON "a"."attrelid" = "cnst"."conrelid" AND "a"."attnum" = ANY ("cnst"."conkey") WHERE "t"."relkind" IN ('r', 'p') AND (("ns"."nspname" = 'public' AND "t"."relname" = 'TBL')) ORDER BY 3, 6`},
	{"pg_constraint by conrelid", `SELECT conname, contype, pg_catalog.pg_get_constraintdef(oid, true) FROM pg_catalog.pg_constraint WHERE conrelid = 'TBLOID' ORDER BY 1`},
	// mikro-orm packages/knex/src/dialects/postgresql (getColumns).
	{"MikroORM getColumns", `select column_name, column_default, is_nullable, udt_name, coalesce(datetime_precision, character_maximum_length) length, numeric_precision, numeric_scale, data_type, is_identity, identity_generation, generation_expression, pg_catalog.col_description(pgc.oid, cols.ordinal_position::int) column_comment from information_schema.columns cols join pg_class pgc on cols.table_name = pgc.relname join pg_attribute pga on pgc.oid = pga.attrelid and cols.column_name = pga.attname where table_schema = 'public' and table_name = 'TBL' order by ordinal_position`},
	// psql describe.c, describeOneTableDetails (PostgreSQL 15), as \d+ sends it.
	{"psql \\d+", `SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated,
  a.attstorage,
  a.attcompression AS attcompression,
  CASE WHEN a.attstattarget=-1 THEN NULL ELSE a.attstattarget END AS attstattarget,
  pg_catalog.col_description(a.attrelid, a.attnum)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = 'TBLOID' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;`},
}

// introspectTwin runs sql on tbl through px and on twin directly, in text
// format, and fails unless the rows agree once twin's name reads as tbl.
func introspectTwin(t *testing.T, ctx context.Context, px, direct *pgx.Conn, name, sql, tbl, twin string) [][]string {
	t.Helper()
	run := func(c *pgx.Conn, table string) [][]string {
		var oid uint32
		if err := c.QueryRow(ctx, "SELECT $1::regclass::oid", table).Scan(&oid); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		q := strings.ReplaceAll(sql, "TBLOID", strconv.FormatUint(uint64(oid), 10))
		q = strings.ReplaceAll(q, "TBL", table)
		rows, err := c.Query(ctx, q, pgx.QueryResultFormats{0})
		if err != nil {
			t.Fatalf("%s on %s: %v", name, table, err)
		}
		defer rows.Close()
		var out [][]string
		for rows.Next() {
			var r []string
			for _, v := range rows.RawValues() {
				s := "NULL"
				if v != nil {
					s = strings.ReplaceAll(string(v), twin, tbl)
				}
				r = append(r, s)
			}
			out = append(out, r)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s on %s: %v", name, table, err)
		}
		return out
	}
	got, want := run(px, tbl), run(direct, twin)
	if strings.HasPrefix(name, "MikroORM") {
		// It joins pg_class by relname only: tables of that name in other
		// schemas (the fail-closed tests' shadows) repeat each row.
		got, want = slices.CompactFunc(got, slices.Equal), slices.CompactFunc(want, slices.Equal)
	}
	if len(want) == 0 {
		t.Fatalf("%s: no rows for %s", name, twin)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\nthrough phiproxy on %s: %q\ndirectly on %s:     %q", name, tbl, got, twin, want)
	}
	return got
}

// TestCatalogIntrospectionAgainstTwin: every ORM's and driver's
// introspection query reports the PHI columns of patients, types and tm
// (type modifiers) with their logical types, exactly as PostgreSQL
// reports their plaintext twins, in the simple and the extended protocol.
func TestCatalogIntrospectionAgainstTwin(t *testing.T) {
	ctx := testCtx(t)
	for _, tc := range []struct {
		name       string
		start      func(t *testing.T) string
		tbl, twins []string
	}{
		{"patients", func(t *testing.T) string { return startProxy(t).dsn() }, []string{"patients", "types"}, []string{"patients_plain", "types_plain"}},
		{"type modifiers", startTypmodProxy, []string{"tm"}, []string{"tm_plain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := tc.start(t)
			for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
				px, direct := connect(t, ctx, dsn, mode), connect(t, ctx, directDSN(), mode)
				for _, q := range introspectionQueries {
					for i, tbl := range tc.tbl {
						introspectTwin(t, ctx, px, direct, q.name+" ("+mode.String()+")", q.sql, tbl, tc.twins[i])
					}
				}
			}
		})
	}
}

// TestCatalogIntrospectionPsql: psql's own \d+ through phiproxy describes
// patients' columns as \d+ describes patients_plain's.
func TestCatalogIntrospectionPsql(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("psql not installed")
	}
	ctx, p := start(t)
	columns := func(dsn, table string) string {
		out, err := exec.CommandContext(ctx, psql, "-X", "-d", dsn, "-c", `\d+ `+table).CombinedOutput()
		if err != nil {
			t.Fatalf("psql \\d+ %s: %v\n%s", table, err, out)
		}
		// The column table only: indexes and CHECK constraints differ.
		s := strings.ReplaceAll(string(out), table, "TBL")
		if i := strings.Index(s, "Indexes:"); i >= 0 {
			s = s[:i]
		}
		lines := strings.Split(s, "\n")
		for i, l := range lines {
			lines[i] = strings.TrimSpace(l) // the title is centred on the name's length
		}
		return strings.Join(lines, "\n")
	}
	got, want := columns(p.dsn(), "patients"), columns(directDSN(), "patients_plain")
	if got != want {
		t.Errorf("psql \\d+ through phiproxy:\n%s\ndirectly on the twin:\n%s", got, want)
	}
	if !strings.Contains(got, "ssn       | text") {
		t.Errorf("unexpected \\d+ output:\n%s", got)
	}
}

// TestCatalogOverlayExact: the overlay's views return exactly the rows of
// pg_attribute and information_schema.columns (read by the application
// role, so privileges filter both alike); only the rows of the configured
// PHI columns differ, and in them only the columns the type decides. Its
// pg_constraint is pg_constraint without the envelope constraints.
func TestCatalogOverlayExact(t *testing.T) {
	ctx := testCtx(t)
	startProxy(t)
	c := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}
	phi := len(testCfg.Columns())
	const attrCols = `attrelid, attname, attstattarget, attnum, attndims, attcacheoff, attcompression, attnotnull, atthasdef, atthasmissing, attidentity, attgenerated, attisdropped, attislocal, attinhcount, attacl, attoptions, attfdwoptions, attmissingval::text`
	const typeCols = `atttypid, atttypmod, attlen, attbyval, attalign, attstorage, attcollation`
	sys := `(SELECT ` + attrCols + `, ` + typeCols + ` FROM pg_catalog.pg_attribute)`
	ovl := `(SELECT ` + attrCols + `, ` + typeCols + ` FROM phiproxy_overlay.pg_attribute)`
	if a, b := count("SELECT count(*) FROM pg_catalog.pg_attribute"), count("SELECT count(*) FROM phiproxy_overlay.pg_attribute"); a != b {
		t.Errorf("pg_attribute has %d rows, the overlay %d", a, b)
	}
	for _, q := range []string{
		`SELECT count(*) FROM (SELECT ` + attrCols + ` FROM pg_catalog.pg_attribute EXCEPT ALL SELECT ` + attrCols + ` FROM phiproxy_overlay.pg_attribute) d`,
		`SELECT count(*) FROM (SELECT ` + attrCols + ` FROM phiproxy_overlay.pg_attribute EXCEPT ALL SELECT ` + attrCols + ` FROM pg_catalog.pg_attribute) d`,
	} {
		if n := count(q); n != 0 {
			t.Errorf("%d rows differ outside the type columns: %s", n, q)
		}
	}
	for _, q := range []string{sys + " EXCEPT ALL " + ovl, ovl + " EXCEPT ALL " + sys} {
		if n := count("SELECT count(*) FROM (" + q + ") d"); n != phi {
			t.Errorf("%d rows differ, want the %d PHI columns: %s", n, phi, q)
		}
	}
	// pg_constraint: the same rows but for the PHI columns' envelope
	// constraints (main_test.go installs one on each).
	var hidden []string
	rows, err := c.Query(ctx, `SELECT conname::text FROM (SELECT oid, conname FROM pg_catalog.pg_constraint EXCEPT ALL SELECT oid, conname FROM phiproxy_overlay.pg_constraint) d ORDER BY 1`)
	if err == nil {
		hidden, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatal(err)
	}
	var envelopes []string
	for _, col := range testCfg.Columns() {
		envelopes = append(envelopes, crypto.EnvelopeCheckName(col))
	}
	sortStrings(envelopes)
	if !reflect.DeepEqual(hidden, envelopes) {
		t.Errorf("the overlay's pg_constraint leaves out %q, want the envelope constraints %q", hidden, envelopes)
	}
	if n := count(`SELECT count(*) FROM (SELECT * FROM phiproxy_overlay.pg_constraint EXCEPT ALL SELECT * FROM pg_catalog.pg_constraint) d`); n != 0 {
		t.Errorf("the overlay's pg_constraint has %d rows pg_constraint does not", n)
	}
	// information_schema.columns: the same rows but for the PHI columns.
	const isc = `SELECT * FROM information_schema.columns`
	const ovc = `SELECT * FROM phiproxy_overlay.columns`
	if a, b := count("SELECT count(*) FROM information_schema.columns"), count("SELECT count(*) FROM phiproxy_overlay.columns"); a != b {
		t.Errorf("information_schema.columns has %d rows, the overlay %d", a, b)
	}
	for _, q := range []string{isc + " EXCEPT ALL " + ovc, ovc + " EXCEPT ALL " + isc} {
		rows, err := c.Query(ctx, "SELECT table_schema || '.' || table_name || '.' || column_name FROM ("+q+") d ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, col := range testCfg.Columns() {
			want = append(want, col.Ident())
		}
		sortStrings(want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("rows that differ: %q, want the PHI columns %q", got, want)
		}
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// overlayConfig is the test config with catalog_overlay set to mode.
func overlayConfig(t *testing.T, mode string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"kek.json", "keys"} {
		if err := os.Symlink(filepath.Join(filepath.Dir(testCfg.Path), f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := os.ReadFile(testCfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(path, append([]byte("catalog_overlay: "+mode+"\n"), doc...), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// ssnType is format_type of patients.ssn as a client sees it.
func ssnType(t *testing.T, ctx context.Context, dsn string) string {
	t.Helper()
	c := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)
	var typ string
	if err := c.QueryRow(ctx, `SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = 'patients'::regclass AND a.attname = 'ssn'`).Scan(&typ); err != nil {
		t.Fatal(err)
	}
	return typ
}

// TestCatalogOverlayFailsClosed: without a current overlay, catalog reads
// are sent as written (bytea, as before); catalog_overlay: use never
// writes, a stale PHI map is not used, and install brings it up to date.
func TestCatalogOverlayFailsClosed(t *testing.T) {
	ctx := testCtx(t)
	admin := connect(t, ctx, testCluster.DSN(testCluster.SuperUser, testCluster.SuperPassword, appDB, "sslmode=disable"), pgx.QueryExecModeSimpleProtocol)
	drop := func() { mustExec(t, ctx, admin, "DROP SCHEMA IF EXISTS phiproxy_overlay CASCADE") }
	// The proxies of each step are closed before the next: one in
	// install mode that is still running re-installs the overlay when
	// the DROP's event trigger announces DDL.
	var served []*testProxy
	serve := func(mode string) *testProxy {
		for _, p := range served {
			p.phi.Close()
		}
		p := serveProxy(t, ctx, overlayConfig(t, mode))
		served = append(served, p)
		return p
	}

	drop()
	if typ := ssnType(t, ctx, serve(config.OverlayOff).dsn()); typ != "bytea" {
		t.Errorf("catalog_overlay: off: ssn is %s, want bytea", typ)
	}
	p := serve(config.OverlayUse)
	if typ := ssnType(t, ctx, p.dsn()); typ != "bytea" {
		t.Errorf("catalog_overlay: use without an overlay: ssn is %s, want bytea", typ)
	}
	if !strings.Contains(p.logs.String(), "catalog overlay missing or stale") {
		t.Errorf("no warning logged:\n%s", p.logs.String())
	}
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = 'phiproxy_overlay'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("catalog_overlay: use created the schema (%d, %v)", n, err)
	}

	// install creates it; use then finds it current.
	if typ := ssnType(t, ctx, serve(config.OverlayInstall).dsn()); typ != "text" {
		t.Errorf("catalog_overlay: install: ssn is %s, want text", typ)
	}
	if typ := ssnType(t, ctx, serve(config.OverlayUse).dsn()); typ != "text" {
		t.Errorf("catalog_overlay: use with a current overlay: ssn is %s, want text", typ)
	}

	// A stale PHI map (one column missing) is not used.
	mustExec(t, ctx, admin, "DELETE FROM phiproxy_overlay.phi_columns WHERE attrelid = 'public.visits'::regclass")
	if typ := ssnType(t, ctx, serve(config.OverlayUse).dsn()); typ != "bytea" {
		t.Errorf("catalog_overlay: use with a stale overlay: ssn is %s, want bytea", typ)
	}
	// An overlay of another version (marker) is replaced by install.
	mustExec(t, ctx, admin, "COMMENT ON VIEW phiproxy_overlay.columns IS 'phiproxy catalog overlay 0'")
	if typ := ssnType(t, ctx, serve(config.OverlayInstall).dsn()); typ != "text" {
		t.Errorf("catalog_overlay: install over an old overlay: ssn is %s, want text", typ)
	}
	// Without the privilege to install, the proxy starts and falls back.
	for _, p := range served {
		p.phi.Close()
	}
	drop()
	mustExec(t, ctx, admin, "DROP ROLE IF EXISTS overlay_reader")
	mustExec(t, ctx, admin, "CREATE ROLE overlay_reader LOGIN PASSWORD 'overlay'")
	ro := overlayConfig(t, config.OverlayInstall)
	// A catalog role that may not CREATE in the database; the verifier
	// lookup needs a superuser, so clients log in by relay.
	ro.CatalogDSN = testCluster.DSN("overlay_reader", "overlay", appDB, "sslmode=disable")
	ro.Auth.Mode = config.AuthRelay
	p = serveProxy(t, ctx, ro)
	if typ := ssnType(t, ctx, p.dsn()); typ != "bytea" {
		t.Errorf("catalog_overlay: install without the privilege: ssn is %s, want bytea", typ)
	}
	if !strings.Contains(p.logs.String(), "catalog overlay not in use") {
		t.Errorf("no warning logged:\n%s", p.logs.String())
	}
	startProxy(t) // leave the overlay installed for the other tests
}

// TestOverlayCommand: what phiproxy overlay status|install does. Status
// writes nothing; install with a DBA's DSN creates the overlay for a
// catalog role that may not, and again is a no-op.
func TestOverlayCommand(t *testing.T) {
	ctx := testCtx(t)
	admin := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, admin, "DROP SCHEMA IF EXISTS phiproxy_overlay CASCADE")
	mustExec(t, ctx, admin, "DROP ROLE IF EXISTS overlay_reader")
	mustExec(t, ctx, admin, "CREATE ROLE overlay_reader LOGIN PASSWORD 'overlay'")
	cfg := overlayConfig(t, config.OverlayUse)
	cfg.CatalogDSN = testCluster.DSN("overlay_reader", "overlay", appDB, "sslmode=disable")

	st, err := Overlay(ctx, cfg, "", false)
	if err != nil || st.Installed || st.Current || len(st.Want) != len(cfg.Columns()) {
		t.Fatalf("status without an overlay: %+v, %v", st, err)
	}
	if _, err := Overlay(ctx, cfg, "", true); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("install as a role that may not create: %v", err)
	}
	if st, err := Overlay(ctx, cfg, testCfg.CatalogDSN, true); err != nil || !st.Current {
		t.Fatalf("install with the DBA's DSN: %+v, %v", st, err)
	}
	var xmin1, xmin2 string
	read := func(dst *string) {
		if err := admin.QueryRow(ctx, "SELECT string_agg(xmin::text, ',') FROM pg_class WHERE relnamespace = 'phiproxy_overlay'::regnamespace").Scan(dst); err != nil {
			t.Fatal(err)
		}
	}
	read(&xmin1)
	if st, err := Overlay(ctx, cfg, testCfg.CatalogDSN, true); err != nil || !st.Current {
		t.Fatalf("install again: %+v, %v", st, err)
	}
	read(&xmin2)
	if xmin1 != xmin2 {
		t.Errorf("installing a current overlay again rewrote it")
	}
	if st, err := Overlay(ctx, cfg, "", false); err != nil || !st.Current {
		t.Fatalf("status as the catalog role after install: %+v, %v", st, err)
	}
}

// TestCatalogOverlayOtherDatabase: the overlay exists only in the
// catalog's database; a session connected to another database through
// phiproxy reads the catalogs as written (it failed with 42P01 on
// phiproxy_overlay.pg_attribute).
func TestCatalogOverlayOtherDatabase(t *testing.T) {
	ctx, p := start(t)
	dsn := "postgres://" + appUser + ":" + appPassword + "@" + p.addr + "/postgres?sslmode=disable"
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		c := connect(t, ctx, dsn, mode)
		var typ string
		if err := c.QueryRow(ctx, `SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = 'pg_catalog.pg_class'::regclass AND a.attname = 'relname'`).Scan(&typ); err != nil || typ != "name" {
			t.Fatalf("%s: pg_attribute in database postgres: %q, %v", mode, typ, err)
		}
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_name = 'pg_class'`).Scan(&n); err != nil || n == 0 {
			t.Fatalf("%s: information_schema.columns in database postgres: %d, %v", mode, n, err)
		}
	}
	if typ := ssnType(t, ctx, p.dsn()); typ != "text" {
		t.Errorf("in the catalog's database ssn is %s, want text", typ)
	}
}

// TestCatalogOverlayInstallDoesNotStall: replacing the overlay's views
// waits for sessions that read them in an open transaction; the install
// gives up after lock_timeout and the proxy serves without the overlay
// rather than stall its snapshot load.
func TestCatalogOverlayInstallDoesNotStall(t *testing.T) {
	ctx := testCtx(t)
	startProxy(t)
	admin := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, admin, "COMMENT ON VIEW phiproxy_overlay.columns IS 'phiproxy catalog overlay 0'")
	reader := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, reader, "BEGIN")
	mustExec(t, ctx, reader, "SELECT 1 FROM phiproxy_overlay.pg_attribute LIMIT 1")
	start := time.Now()
	p := serveProxy(t, ctx, testCfg)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the proxy took %v to start", d)
	}
	if typ := ssnType(t, ctx, p.dsn()); typ != "bytea" {
		t.Errorf("with the install blocked: ssn is %s, want bytea", typ)
	}
	if !strings.Contains(p.logs.String(), "lock timeout") {
		t.Errorf("no lock timeout logged:\n%s", p.logs.String())
	}
	mustExec(t, ctx, reader, "ROLLBACK")
	if typ := ssnType(t, ctx, startProxy(t).dsn()); typ != "text" {
		t.Errorf("after the reader's transaction ended: ssn is %s, want text", typ)
	}
}

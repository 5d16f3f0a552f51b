package config

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// The cluster is started on first use so that the pure config tests stay
// fast; TestMain stops it.
var shared = testenv.LazyCluster{Options: pgcluster.Options{NoTLS: true}}

func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

// testDB returns a connection to a fresh database of the shared cluster.
func testDB(t *testing.T) *pgx.Conn { return shared.FreshDB(t) }

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

// loadCatalog parses doc (as the file name, for line references) and
// loads the catalog of conn under it.
func loadCatalog(t *testing.T, conn *pgx.Conn, doc, name string, version uint64) (*Catalog, *Config) {
	t.Helper()
	cfg, err := Parse([]byte(doc), name)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := LoadCatalog(context.Background(), conn, cfg, version)
	if err != nil {
		t.Fatal(err)
	}
	return cat, cfg
}

const clinicSchema = `
CREATE TABLE patients (id int PRIMARY KEY, gone text, name text, ssn bytea, dob bytea, notes text);
ALTER TABLE patients DROP COLUMN gone;
CREATE TABLE visits (id int, patient_ssn bytea, at timestamptz);
CREATE VIEW v_patients AS SELECT id, ssn AS social FROM patients WHERE dob IS NOT NULL;
CREATE VIEW v_names AS SELECT id, name FROM patients;
CREATE VIEW v_nested AS SELECT social FROM v_patients;
CREATE VIEW v_rows AS SELECT p FROM patients p;
CREATE MATERIALIZED VIEW mv_visits AS SELECT patient_ssn FROM visits;
CREATE SCHEMA other;
CREATE TABLE other.plain (x int);
CREATE FUNCTION count_patients() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM Patients';
CREATE FUNCTION count_patients_atomic() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM patients; END;
CREATE FUNCTION dyn() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'DELETE FROM v_nested'; END$$;
CREATE TABLE patients_archive_x (a int);
CREATE FUNCTION harmless() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM patients_archive_x';
`

const clinicConfig = minimal + `phi:
  public.patients:
    ssn: {type: text, mode: deterministic}
    dob: {type: date, mode: randomized}
  public.visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn}
`

func TestCatalogSnapshot(t *testing.T) {
	ctx := context.Background()
	conn := testDB(t)
	mustExec(t, conn, clinicSchema)
	cat, cfg := loadCatalog(t, conn, clinicConfig, "/etc/phiproxy.yaml", 7)
	if cat.Version != 7 {
		t.Errorf("version = %d", cat.Version)
	}
	if err := cat.Check(cfg); err != nil {
		t.Errorf("check of a matching schema: %v", err)
	}

	pat, ok := cat.Relation("public", "patients")
	if !ok || pat.Kind != KindTable {
		t.Fatalf("patients = %+v", pat)
	}
	var oid uint32
	if err := conn.QueryRow(ctx, "SELECT 'public.patients'::regclass::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	if pat.OID != oid {
		t.Errorf("patients OID = %d, want %d", pat.OID, oid)
	}
	if byOID, ok := cat.RelationByOID(oid); !ok || byOID != pat {
		t.Errorf("RelationByOID does not find patients")
	}
	var names []string
	for _, a := range pat.Columns {
		names = append(names, fmt.Sprintf("%d:%s:%s", a.Num, a.Name, a.TypeName))
	}
	if got, want := strings.Join(names, " "), "1:id:integer 3:name:text 4:ssn:bytea 5:dob:bytea 6:notes:text"; got != want {
		t.Errorf("dropped columns must be ignored and attnums kept:\n got %s\nwant %s", got, want)
	}
	if _, ok := pat.Column("gone"); ok {
		t.Error("dropped column is visible")
	}
	ssn, _ := pat.Column("ssn")
	dob, _ := pat.Column("dob")
	if ssn.TypeOID != ByteaOID {
		t.Errorf("ssn type OID = %d", ssn.TypeOID)
	}
	if a, ok := pat.ColumnByNum(4); !ok || a.Name != "ssn" {
		t.Errorf("ColumnByNum(4) = %+v %v", a, ok)
	}
	if col, ok := cat.PHIColumn(ColumnRef{pat.OID, ssn.Num}); !ok || col.Ident() != "public.patients.ssn" {
		t.Errorf("PHIColumn(ssn) = %+v %v", col, ok)
	}
	if _, ok := cat.PHIColumn(ColumnRef{pat.OID, 3}); ok {
		t.Error("name is not PHI")
	}

	kinds := map[string]RelKind{"v_patients": KindView, "mv_visits": KindMatView, "visits": KindTable}
	for name, want := range kinds {
		if r, ok := cat.Relation("public", name); !ok || r.Kind != want {
			t.Errorf("%s: kind %v ok %v, want %v", name, r.Kind, ok, want)
		}
	}
	if _, ok := cat.Relation("other", "plain"); !ok {
		t.Error("other.plain missing")
	}
	if _, ok := cat.Relation("pg_catalog", "pg_class"); ok {
		t.Error("system catalogs are not part of the snapshot")
	}

	visits, _ := cat.Relation("public", "visits")
	vssn, _ := visits.Column("patient_ssn")
	both := []ColumnRef{{pat.OID, ssn.Num}, {pat.OID, dob.Num}}
	sortRefs(both)
	deps := map[string][]ColumnRef{
		"v_patients": both, // the WHERE clause counts too
		"v_nested":   both, // through v_patients
		"v_rows":     both, // whole-row reference
		"v_names":    nil,
		"mv_visits":  {{visits.OID, vssn.Num}},
	}
	for name, want := range deps {
		r, _ := cat.Relation("public", name)
		if fmt.Sprint(r.PHIDeps) != fmt.Sprint(want) {
			t.Errorf("%s PHIDeps = %v, want %v (DependsOn %v)", name, r.PHIDeps, want, r.DependsOn)
		}
		if got := cat.IsPHIRelation(r.OID); got != (want != nil) {
			t.Errorf("IsPHIRelation(%s) = %v", name, got)
		}
	}
	vp, _ := cat.Relation("public", "v_patients")
	vn, _ := cat.Relation("public", "v_nested")
	if fmt.Sprint(vn.DependsOn) != fmt.Sprint([]ColumnRef{{vp.OID, 2}}) {
		t.Errorf("v_nested DependsOn = %v, want v_patients.social", vn.DependsOn)
	}

	for _, name := range []string{"count_patients", "count_patients_atomic", "dyn"} {
		fs := cat.PHIFunctions(name)
		if len(fs) != 1 || fs[0].Schema != "public" || len(fs[0].Touches) == 0 {
			t.Errorf("function %s must be flagged as touching PHI, got %+v", name, fs)
		}
	}
	if fs := cat.PHIFunctions("harmless"); len(fs) != 0 {
		t.Errorf("a longer identifier containing the table name is not a mention: %+v", fs[0])
	}
	var fnames []string
	for _, f := range cat.Functions() {
		fnames = append(fnames, f.Schema+"."+f.Name)
		if got := cat.PHIFunctions(f.Name); !slices.Contains(got, f) {
			t.Errorf("Functions() lists %s.%s, which PHIFunctions(%q) does not return", f.Schema, f.Name, f.Name)
		}
	}
	if want := []string{"public.count_patients", "public.count_patients_atomic", "public.dyn"}; !slices.Equal(fnames, want) {
		t.Errorf("Functions() = %v, want %v", fnames, want)
	}
}

func TestCatalogPartitionsAreChildrenOfPHITables(t *testing.T) {
	conn := testDB(t)
	mustExec(t, conn, `CREATE TABLE patients (id int, ssn bytea) PARTITION BY RANGE (id);
CREATE TABLE patients_1 PARTITION OF patients FOR VALUES FROM (0) TO (1000);`)
	cat, cfg := loadCatalog(t, conn, minimal+"phi:\n  patients:\n    ssn: {type: text, mode: randomized}\n", "", 1)
	if err := cat.Check(cfg); err != nil {
		t.Errorf("a partitioned table may hold PHI columns: %v", err)
	}
	part, _ := cat.Relation("public", "patients_1")
	parent, _ := cat.Relation("public", "patients")
	if fmt.Sprint(part.Parents) != fmt.Sprint([]uint32{parent.OID}) || !cat.IsPHIRelation(part.OID) {
		t.Errorf("partition parents %v, IsPHIRelation %v", part.Parents, cat.IsPHIRelation(part.OID))
	}
}

func TestCatalogCheckNamesEveryProblemWithItsLine(t *testing.T) {
	conn := testDB(t)
	mustExec(t, conn, `CREATE TABLE patients (id int, ssn text, dob bytea);
CREATE VIEW v AS SELECT id FROM patients;`)
	doc := minimal + `phi:
  public.patients:
    ssn: {type: text, mode: deterministic}
    dob: {type: date, mode: randomized}
    mrn: {type: text, mode: randomized}
  public.ghosts:
    x: {type: int4, mode: randomized}
  public.v:
    id: {type: int4, mode: randomized}
`
	cat, cfg := loadCatalog(t, conn, doc, "/etc/p.yaml", 1)
	err := cat.Check(cfg)
	if err == nil {
		t.Fatal("check passed a schema with missing and non-bytea columns")
	}
	msg := err.Error()
	for _, want := range []string{
		"/etc/p.yaml:6: phi column public.patients.ssn: column has type text in the database; a PHI column must be bytea",
		"/etc/p.yaml:8: phi column public.patients.mrn: column mrn does not exist in public.patients",
		"/etc/p.yaml:10: phi column public.ghosts.x: relation public.ghosts does not exist",
		"/etc/p.yaml:12: phi column public.v.id: public.v is a view; PHI columns must be declared on tables",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "dob") {
		t.Errorf("dob is fine but reported:\n%s", msg)
	}
	if n := len(strings.Split(msg, "\n")); n != 4 {
		t.Errorf("want 4 problems, got %d:\n%s", n, msg)
	}
}

func TestCatalogCheckAcceptsObservedPlaintextColumns(t *testing.T) {
	conn := testDB(t)
	mustExec(t, conn, `CREATE TABLE patients (id int, ssn text, dob date, mrn text)`)
	doc := minimal + `phi:
  public.patients:
    ssn: {type: text, mode: deterministic, enforce: observe}
    dob: {type: date, mode: randomized, enforce: observe}
    mrn: {type: text, mode: randomized}
`
	cat, cfg := loadCatalog(t, conn, doc, "/etc/p.yaml", 1)
	err := cat.Check(cfg)
	if err == nil || strings.Contains(err.Error(), "ssn") || strings.Contains(err.Error(), "dob") ||
		!strings.Contains(err.Error(), "/etc/p.yaml:8: phi column public.patients.mrn: column has type text") {
		t.Fatalf("only the enforced text column is a problem, got: %v", err)
	}
	if es := OverlayEntries(cfg, cat); len(es) != 0 {
		t.Fatalf("observed columns are not in the overlay: %+v", es)
	}
}

func TestRoleMembershipsFollowNestedGroups(t *testing.T) {
	ctx := context.Background()
	conn := testDB(t)
	mustExec(t, conn, `DROP ROLE IF EXISTS alice, bob, physician, clinical, staff, unrelated;
CREATE ROLE staff; CREATE ROLE clinical IN ROLE staff; CREATE ROLE physician IN ROLE clinical;
CREATE ROLE unrelated;
CREATE ROLE alice LOGIN IN ROLE physician; CREATE ROLE bob LOGIN;
GRANT staff TO physician;`)
	got, err := RoleMemberships(ctx, conn, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "alice,clinical,physician,staff" {
		t.Errorf("alice's roles = %v", got)
	}
	for _, r := range got {
		var member bool
		if err := conn.QueryRow(ctx, "SELECT pg_has_role('alice', $1, 'MEMBER')", r).Scan(&member); err != nil || !member {
			t.Errorf("pg_has_role(alice, %s) = %v, %v", r, member, err)
		}
	}
	if got, err := RoleMemberships(ctx, conn, "bob"); err != nil || strings.Join(got, ",") != "bob" {
		t.Errorf("bob's roles = %v, %v", got, err)
	}
	if _, err := RoleMemberships(ctx, conn, "nobody"); err == nil {
		t.Error("an unknown role must be an error")
	}
}

// The search_path a session starts with, resolved like PostgreSQL:
// role-in-database, then role, then database, then the server's setting.
// Each expectation is compared with what a real login gets.
func TestCatalogSearchPathDefaults(t *testing.T) {
	ctx := context.Background()
	conn := testDB(t)
	db := conn.Config().Database
	mustExec(t, conn, `DROP ROLE IF EXISTS sp_both, sp_role, sp_none;
CREATE ROLE sp_both LOGIN PASSWORD 'pw'; CREATE ROLE sp_role LOGIN PASSWORD 'pw'; CREATE ROLE sp_none LOGIN PASSWORD 'pw';
CREATE SCHEMA IF NOT EXISTS app; CREATE SCHEMA IF NOT EXISTS tenant;
ALTER ROLE sp_both SET search_path = app, public;
ALTER ROLE sp_both IN DATABASE `+db+` SET search_path = tenant;
ALTER ROLE sp_role SET search_path = app;
ALTER DATABASE `+db+` SET search_path = "$user", tenant, public;`)
	cat, err := LoadCatalog(ctx, conn, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := shared.Get(t)
	for _, role := range []string{"sp_both", "sp_role", "sp_none"} {
		login, err := pgx.Connect(ctx, c.DSN(role, "pw", db, "sslmode=disable"))
		if err != nil {
			t.Fatal(err)
		}
		var real string
		err = login.QueryRow(ctx, "SHOW search_path").Scan(&real)
		login.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := cat.SearchPath(role, db); got != real {
			t.Errorf("%s: catalog says %q, PostgreSQL gives %q", role, got, real)
		}
	}
	if got := cat.SearchPath("sp_none", "postgres"); got != `"$user", public` {
		t.Errorf("server default = %q", got)
	}
}

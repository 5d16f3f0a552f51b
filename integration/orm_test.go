package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
)

// The ORM suite (issue 17, item 8): each stack — an ORM or a driver used
// as its users use it — runs one program twice, through phiproxy on a
// database whose PHI columns are bytea, and directly on a plaintext twin
// with the logical types. Each program prints JSON lines; apart from the
// refusal lines (below) the two outputs must be identical.
//
// Every stack has its own pair of databases, made from two templates, and
// its own phiproxy (the PHI map is the catalog database's), so the stacks
// run in parallel. The programs live in orm/ (Go stacks in orm_*_test.go).
//
// Refusals: through phiproxy a program also checks, on purpose, what
// phiproxy refuses (ORDER BY, ranges, LIKE on PHI), printing
// {"refused": "<what>", "sqlstate": "…"}. It prints them only when its mode
// argument is "phi"; the test requires the stack's list of them, each with
// 0A000; docs/clients.md lists them with what to write instead.

// ormSchema is the stack's schema; %s are the PHI columns' types (bytea
// through phiproxy, the logical types on the twin). ssn is deterministic
// and unique (upserts conflict on it), diagnosis and notes randomized text,
// dob a randomized date, visits.patient_ssn shares ssn's key (joins).
const ormSchema = `
CREATE TABLE patients (
	id serial PRIMARY KEY,
	name text NOT NULL,
	ssn %[1]s UNIQUE,
	diagnosis %[1]s,
	notes %[1]s,
	dob %[2]s,
	active boolean NOT NULL DEFAULT true
);
CREATE TABLE visits (
	id serial PRIMARY KEY,
	patient_ssn %[1]s NOT NULL,
	visited_on date NOT NULL,
	reason text
);
`

// ormColumns are the PHI columns of the stacks' proxies.
var ormColumns = []config.Column{
	{Schema: "public", Table: "patients", Name: "ssn", Type: "text", Mode: config.ModeDeterministic, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "diagnosis", Type: "text", Mode: config.ModeRandomized, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "notes", Type: "text", Mode: config.ModeRandomized, Default: config.AccessPlaintext},
	{Schema: "public", Table: "patients", Name: "dob", Type: "date", Mode: config.ModeRandomized, Default: config.AccessPlaintext},
	{Schema: "public", Table: "visits", Name: "patient_ssn", Type: "text", Mode: config.ModeDeterministic, Key: "public.patients.ssn", Default: config.AccessPlaintext},
}

const (
	ormTemplate      = "orm_template"
	ormPlainTemplate = "orm_plain_template"
)

type ormEnv struct {
	extra string // keys: and phi: for the stacks' proxies
}

var ormShared perRun[*ormEnv]

func ormFixture(t *testing.T) *ormEnv {
	t.Helper()
	return ormShared.get(t, "ORM fixture", buildORMFixture)
}

// buildORMFixture makes the two template databases and the keys.
func buildORMFixture() (*ormEnv, error) {
	e := fixture
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for db, ddl := range map[string][]string{
		ormTemplate:      withEnvelopeChecks(fmt.Sprintf(ormSchema, "bytea", "bytea"), ormColumns),
		ormPlainTemplate: {fmt.Sprintf(ormSchema, "text", "date")},
	} {
		if err := e.cluster.Exec(ctx, "CREATE DATABASE "+db+" OWNER app"); err != nil {
			return nil, err
		}
		if err := execAsApp(ctx, db, ddl); err != nil {
			return nil, err
		}
	}
	extra, err := createKeys(ctx, filepath.Join(e.work, "orm-keys"), ormTemplate, phiSection(ormColumns), "catalog_overlay: off\n")
	return &ormEnv{extra: extra}, err
}

// ormStack is one ORM or driver in the suite.
type ormStack struct {
	name string
	db   string // the stack's databases are orm_<db> and orm_<db>_plain
	// run runs the stack's program on dsn; phi says whether it goes
	// through phiproxy (and so checks the refusals).
	run func(t *testing.T, dsn string, phi bool) string
	// want are lines the output must hold (the comparison alone would
	// also pass if both runs printed nothing useful).
	want []string
	// refusals are the refusal lines' names the run through phiproxy
	// must print, each with SQLSTATE 0A000.
	refusals []string
}

// ormMode is the mode argument the programs take.
func ormMode(phi bool) string {
	if phi {
		return "phi"
	}
	return "plain"
}

// TestORMsMatchPlaintext runs every stack of ormStacks through phiproxy and
// on its plaintext twin, in parallel, and compares (docs/clients.md).
func TestORMsMatchPlaintext(t *testing.T) {
	f := ormFixture(t)
	for _, s := range ormStacks() {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			runORMStack(t, f, s)
		})
	}
}

func runORMStack(t *testing.T, f *ormEnv, s ormStack) {
	e := fixture
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	encDB, plainDB := "orm_"+s.db, "orm_"+s.db+"_plain"
	for db, tmpl := range map[string]string{encDB: ormTemplate, plainDB: ormPlainTemplate} {
		for _, q := range []string{"DROP DATABASE IF EXISTS " + db, "CREATE DATABASE " + db + " TEMPLATE " + tmpl + " OWNER app"} {
			if err := e.cluster.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := startProxy(t, proxyOpts{extra: f.extra, catalogDB: encDB})
	want := s.run(t, appDSN(e.cluster.Addr(), plainDB), false)
	got := s.run(t, appDSN(p.addr(), encDB), true)
	if testing.Verbose() {
		t.Logf("%s through phiproxy:\n%s", s.name, got)
	}
	got, refused := splitRefusals(t, got)
	if d := diffLines(got, want); d != "" {
		t.Fatalf("%s through phiproxy differs from PostgreSQL on the plaintext twin: %s\nthrough phiproxy:\n%s", s.name, d, got)
	}
	for _, w := range s.want {
		if !strings.Contains(got, w+"\n") {
			t.Errorf("%s output lacks %s:\n%s", s.name, w, got)
		}
	}
	var wantRefused []string
	for _, r := range s.refusals {
		wantRefused = append(wantRefused, r+" 0A000")
	}
	sort.Strings(wantRefused)
	if strings.Join(refused, ",") != strings.Join(wantRefused, ",") {
		t.Errorf("%s through phiproxy checked the refusals %v, want %v", s.name, refused, wantRefused)
	}
	assertORMCiphertext(t, encDB)
}

// splitRefusals takes the refusal lines out of out; it returns the other
// lines and the refusals as "name SQLSTATE", sorted.
func splitRefusals(t *testing.T, out string) (string, []string) {
	t.Helper()
	var rest strings.Builder
	var names []string
	for _, line := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(line, `{"refused"`) {
			rest.WriteString(line)
			continue
		}
		var r struct{ Refused, SQLState string }
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("refusal line %q: %v", line, err)
		}
		names = append(names, r.Refused+" "+r.SQLState)
	}
	sort.Strings(names)
	return rest.String(), names
}

// assertORMCiphertext checks around the proxy that db's PHI columns hold
// envelopes (their CHECK constraints refuse anything else) and that the
// program left some there.
func assertORMCiphertext(t *testing.T, db string) {
	t.Helper()
	e := fixture
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, appDSN(e.cluster.Addr(), db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n, bad int
	err = conn.QueryRow(ctx, `
SELECT count(v), count(v) FILTER (WHERE substring(v from 1 for 3) <> decode('504801', 'hex'))
FROM (SELECT ssn FROM patients UNION ALL SELECT diagnosis FROM patients UNION ALL SELECT notes FROM patients
      UNION ALL SELECT dob FROM patients UNION ALL SELECT patient_ssn FROM visits) AS c(v)`).Scan(&n, &bad)
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 || bad != 0 {
		t.Fatalf("%s around phiproxy: %d non-NULL PHI values, %d without the envelope header", db, n, bad)
	}
}

// ormScript is a stack whose program runs as `interpreter script DSN MODE`.
func ormScript(interpreter, script string) func(t *testing.T, dsn string, phi bool) string {
	return func(t *testing.T, dsn string, phi bool) string {
		return runCmd(t, interpreter, script, dsn, ormMode(phi))
	}
}

// ormLines joins JSON lines for a Go stack's output.
type ormLines struct {
	t *testing.T
	b strings.Builder
}

func (o *ormLines) put(v any) {
	o.t.Helper()
	j, err := json.Marshal(v)
	if err != nil {
		o.t.Fatal(err)
	}
	o.b.Write(j)
	o.b.WriteByte('\n')
}

// ormStacks is the suite, in the order the issue lists the ecosystems.
func ormStacks() []ormStack {
	return []ormStack{
		{name: "GORM", db: "gorm", run: runGORM,
			want: []string{
				`{"columns":["id:int4","name:text","ssn:text null","diagnosis:text null","notes:text null","dob:date null","active:bool"]}`,
				`{"after transaction":[{"id":1,"name":"Ada","ssn":"111-11-1111","diagnosis":"bronchitis","notes":"first visit","dob":"1980-01-02","active":true},{"id":2,"name":"Bob","ssn":"222-22-2222","diagnosis":"cold","notes":"ünïcödé \"q\" 'x'","dob":"1975-07-01","active":true}]}`,
			},
			refusals: []string{"gorm Order(ssn)", "gorm Where(dob > ?)", "gorm Where(ssn LIKE ?)"}},
		{name: "SQLAlchemy psycopg2", db: "sqlalchemy", run: ormScript(pythonBin, "orm/python/sqla.py"),
			want: []string{
				`{"columns": [["id", "INTEGER", false], ["name", "TEXT", false], ["ssn", "TEXT", true], ["diagnosis", "TEXT", true], ["notes", "TEXT", true], ["dob", "DATE", true], ["active", "BOOLEAN", false]]}`,
			},
			refusals: []string{"sqlalchemy order_by(Patient.ssn)", "sqlalchemy Patient.dob > date", "sqlalchemy Patient.ssn.like()", "sqlalchemy Patient.ssn.startswith()"}},
		{name: "psycopg 3", db: "psycopg3", run: ormScript(pythonBin, "orm/python/psycopg3.py"),
			want:     []string{`{"columns": [["id", "integer"], ["name", "text"], ["ssn", "text"], ["diagnosis", "text"], ["notes", "text"], ["dob", "date"], ["active", "boolean"]]}`},
			refusals: []string{"psycopg ORDER BY ssn", "psycopg dob >", "psycopg ssn LIKE"}},
		{name: "Django psycopg2", db: "django", run: ormScript(pythonBin, "orm/python/django_crud.py"),
			want: []string{
				`{"columns": [["id", "AutoField", false], ["name", "TextField", false], ["ssn", "TextField", true], ["diagnosis", "TextField", true], ["notes", "TextField", true], ["dob", "DateField", true], ["active", "BooleanField", false]]}`,
				`{"annotate_grouped_by_every_column": true}`,
				`{"bulk_update_sent_case_cast": true}`,
			},
			refusals: []string{"django order_by('ssn')", "django filter(dob__gt=…)", "django filter(ssn__startswith=…)", "django filter(notes__icontains=…)"}},
		{name: "Sequelize", db: "sequelize", run: ormScript("node", "orm/node/sequelize.js"),
			want: []string{
				`{"columns":[["id","INTEGER",false],["name","TEXT",false],["ssn","TEXT",true],["diagnosis","TEXT",true],["notes","TEXT",true],["dob","DATE",true],["active","BOOLEAN",false]]}`,
				`{"findOrCreate sent pg_temp.testfunc":true}`,
			},
			refusals: []string{"sequelize order: [['ssn', 'ASC']]", "sequelize dob: { [Op.gt] }", "sequelize ssn: { [Op.like] }"}},
		{name: "knex", db: "knex", run: ormScript("node", "orm/node/knex.js"),
			want: []string{
				`{"columnInfo":[["id","integer",false,null],["name","text",false,null],["ssn","text",true,null],["diagnosis","text",true,null],["notes","text",true,null],["dob","date",true,null],["active","boolean",false,null]]}`,
			},
			refusals: []string{"knex orderBy('ssn')", "knex where('dob', '>', …)", "knex whereLike('ssn', …)", "knex whereBetween('dob', …)"}},
		{name: "TypeORM", db: "typeorm", run: ormScript("node", "orm/node/typeorm.js"),
			want: []string{
				`{"schema diff":[]}`,
				`{"columns":[["id","integer",false,false],["name","text",false,false],["ssn","text",true,true],["diagnosis","text",true,false],["notes","text",true,false],["dob","date",true,false],["active","boolean",false,false]]}`,
			},
			refusals: []string{"typeorm order: { ssn }", "typeorm MoreThan(dob)", "typeorm Like(ssn)", "typeorm upsert skipUpdateIfNoValuesChanged"}},
		{name: "MikroORM", db: "mikroorm", run: ormScript("node", "orm/node/mikroorm.js"),
			want:     []string{`{"schema diff":[]}`, `{"flush sent UPDATE … CASE":true}`},
			refusals: []string{"mikroorm orderBy: { ssn }", "mikroorm dob: { $gt }", "mikroorm ssn: { $like }"}},
		{name: "ActiveRecord", db: "activerecord", run: ormScript("ruby", "orm/ruby/activerecord.rb"),
			want: []string{
				`{"columns":[["id","integer","integer",false],["name","text","text",false],["ssn","text","text",true],["diagnosis","text","text",true],["notes","text","text",true],["dob","date","date",true],["active","boolean","boolean",false],["email","text","text",true]]}`,
			},
			refusals: []string{"activerecord order(:ssn)", "activerecord where('dob > ?')", "activerecord where(dob: range)", "activerecord arel matches (ILIKE)"}},
		{name: "Hibernate", db: "hibernate", run: runHibernate,
			want:     []string{`{"validated":true}`},
			refusals: []string{"hibernate HQL order by ssn", "hibernate HQL dob >", "hibernate HQL ssn like"}},
		{name: "lib-pq database-sql", db: "libpq", run: runSQL("postgres"), want: sqlWant, refusals: sqlRefusals},
		{name: "pgx-stdlib database-sql", db: "pgxstd", run: runSQL("pgx"), want: sqlWant, refusals: sqlRefusals},
	}
}

var (
	sqlWant = []string{
		`{"columns":[["id","integer","NO"],["name","text","NO"],["ssn","text","YES"],["diagnosis","text","YES"],["notes","text","YES"],["dob","date","YES"],["active","boolean","NO"]]}`,
		`{"duplicate ssn":"23505"}`,
	}
	sqlRefusals = []string{"database/sql ORDER BY ssn", "database/sql dob BETWEEN", "database/sql ssn LIKE"}
)

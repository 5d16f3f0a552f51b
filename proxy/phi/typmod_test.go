package phi

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The type-modifier tests (issue 11, items 11, 12, 13, 17) run against a
// PHI table tm whose columns carry modifiers, and its plaintext twin
// tm_plain with the real types: the same statements go to tm through
// phiproxy and to tm_plain directly, and the answers must agree.
const tmPHI = `phi:
  public.tm:
    v:   {type: varchar(3), mode: deterministic, default: plaintext}
    c:   {type: char(4), mode: deterministic, default: plaintext}
    n:   {type: "numeric(5, 2)", mode: deterministic, default: plaintext}
    ts:  {type: timestamp(0), mode: deterministic, default: plaintext}
    tz:  {type: timestamp(2) with time zone, mode: randomized, default: plaintext}
    t:   {type: text, mode: deterministic, default: plaintext}
    u:   {type: numeric, mode: deterministic, default: plaintext}
    tsx: {type: timestamp, mode: deterministic, default: plaintext}
    j:   {type: jsonb, mode: deterministic, default: plaintext}
    mrn: {type: int8, mode: deterministic, default: plaintext}
`

var tmCols = []struct{ name, sqlType string }{
	{"v", "varchar(3)"}, {"c", "char(4)"}, {"n", "numeric(5,2)"}, {"ts", "timestamp(0)"}, {"tz", "timestamptz(2)"},
	{"t", "text"}, {"u", "numeric"}, {"tsx", "timestamp"}, {"j", "jsonb"}, {"mrn", "int8"},
}

// startTypmodProxy creates tm and tm_plain (fresh), a config with tm's
// columns and their keys, and a proxy in front of the test cluster.
func startTypmodProxy(t *testing.T) string {
	t.Helper()
	ctx := testCtx(t)
	var enc, plain []string
	for _, c := range tmCols {
		enc = append(enc, c.name+" bytea")
		plain = append(plain, c.name+" "+c.sqlType)
	}
	cfg, err := setupPHI(ctx, testCluster, t.TempDir(), tmPHI,
		"DROP TABLE IF EXISTS tm, tm_plain",
		"CREATE TABLE tm (id int4 PRIMARY KEY, "+strings.Join(enc, ", ")+")",
		"CREATE TABLE tm_plain (id int4 PRIMARY KEY, "+strings.Join(plain, ", ")+")",
		"CREATE UNIQUE INDEX ON tm (u)", "CREATE UNIQUE INDEX ON tm_plain (u)")
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, ctx, cfg).dsn()
}

// twinConns returns a connection through phiproxy and a direct one, in
// mode, with TimeZone UTC.
func twinConns(t *testing.T, ctx context.Context, dsn string, mode pgx.QueryExecMode) (px, direct *pgx.Conn) {
	return connect(t, ctx, dsn+"&timezone=UTC", mode), connect(t, ctx, directDSN()+"&timezone=UTC", mode)
}

// both runs sql (with "TBL" for the table) on tm through phiproxy and on
// tm_plain directly and requires the same outcome: the same SQLSTATE, or
// the same rows as text.
func both(t *testing.T, ctx context.Context, px, direct *pgx.Conn, sql string, args ...any) [][]string {
	t.Helper()
	got, gotFD, gerr := queryText(ctx, px, strings.ReplaceAll(sql, "TBL", "tm"), args...)
	want, wantFD, werr := queryText(ctx, direct, strings.ReplaceAll(sql, "TBL", "tm_plain"), args...)
	if sqlstate(gerr) != sqlstate(werr) || (gerr == nil) != (werr == nil) {
		t.Fatalf("%s: through phiproxy %v, PostgreSQL %v", sql, gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\nthrough phiproxy %q\nPostgreSQL       %q", sql, got, want)
	}
	for i := range wantFD {
		if g, w := gotFD[i], wantFD[i]; g.DataTypeOID != w.DataTypeOID || g.TypeModifier != w.TypeModifier {
			t.Fatalf("%s: column %s described as type %d(%d), PostgreSQL %d(%d)", sql, w.Name, g.DataTypeOID, g.TypeModifier, w.DataTypeOID, w.TypeModifier)
		}
	}
	return got
}

// TestTypeModifiersAgainstTwin: issue 11, item 11. Writes get PostgreSQL's
// result for the column's modifier, casts with modifiers are applied as
// PostgreSQL applies them, comparisons compare the cast value, and
// RowDescription reports the modifier.
func TestTypeModifiersAgainstTwin(t *testing.T) {
	ctx := testCtx(t)
	dsn := startTypmodProxy(t)
	for i, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			px, direct := twinConns(t, ctx, dsn, mode)
			id := func(k int) int { return 1000*i + k }
			// Assignment: truncation of trailing spaces, padding, rounding.
			both(t, ctx, px, direct, "INSERT INTO TBL (id, v, c, n, ts, tz) VALUES ($1, 'ab   ', 'ab', 1.235, '2020-01-02 12:00:00.5', '2020-01-02 12:00:00.125+02')", id(1))
			// Explicit casts: truncation and rounding; the same for
			// parameters.
			both(t, ctx, px, direct, "INSERT INTO TBL (id, t, u, tsx, v) VALUES ($1, 'abcdefgh'::varchar(3), '1.2345'::numeric(5,2), '2020-01-02 12:00:00.7'::timestamp(0), 'xyz'::varchar(2))", id(2))
			both(t, ctx, px, direct, "INSERT INTO TBL (id, t, c) VALUES ($1, $2::varchar(3), CAST($3 AS char(2)))", id(3), "abcdefgh", "klm")
			// Too long, out of precision: the server's errors.
			both(t, ctx, px, direct, "INSERT INTO TBL (id, v) VALUES ($1, 'abcd')", id(4))
			both(t, ctx, px, direct, "INSERT INTO TBL (id, v) VALUES ($1, $2)", id(4), "abcd")
			both(t, ctx, px, direct, "INSERT INTO TBL (id, n) VALUES ($1, 999.995)", id(4))
			both(t, ctx, px, direct, "UPDATE TBL SET c = 'abcde' WHERE id = $1", id(1))
			// Comparisons compare the value as PostgreSQL does.
			both(t, ctx, px, direct, "INSERT INTO TBL (id, t) VALUES ($1, '753-52-1000')", id(5))
			both(t, ctx, px, direct, "SELECT id FROM TBL WHERE t = '753-52-1000'::varchar(5)")
			both(t, ctx, px, direct, "SELECT id FROM TBL WHERE t = $1::varchar(5)", "753-52-1000")
			both(t, ctx, px, direct, "SELECT id FROM TBL WHERE t = '753-52-1000'::varchar(11) ORDER BY id")
			both(t, ctx, px, direct, "SELECT id FROM TBL WHERE v = 'ab ' AND c = 'ab' AND n = 1.24 AND ts = '2020-01-02 12:00:01' AND id = $1", id(1))
			both(t, ctx, px, direct, "SELECT id FROM TBL WHERE n = 1.235 OR v = 'abcd' OR c = 'ab      '")
			both(t, ctx, px, direct, "SELECT id FROM TBL WHERE c = ANY('{ab,kl}'::char(2)[]) AND id IN ($1, $2) ORDER BY id", id(1), id(3))
			// What the client reads back, and how it is described.
			both(t, ctx, px, direct, "SELECT id, v, c, n, ts, tz, t, u, tsx FROM TBL WHERE id IN ($1, $2, $3) ORDER BY id", id(1), id(2), id(3))
		})
	}
}

// TestNumericAndJSONBEquality: issue 11, item 12. Deterministic equality,
// GROUP BY, DISTINCT and unique indexes agree with PostgreSQL for numeric
// and jsonb values that are equal in different forms. The difference a
// client sees is documented: numbers read back without trailing fraction
// zeros (1.0 as 1) unless the column is numeric(p,s).
func TestNumericAndJSONBEquality(t *testing.T) {
	ctx := testCtx(t)
	dsn := startTypmodProxy(t)
	px, direct := twinConns(t, ctx, dsn, pgx.QueryExecModeCacheStatement)
	both(t, ctx, px, direct, `INSERT INTO TBL (id, u, j, mrn) VALUES (1, 1.0, '{"a":1.0,"b":[1e2]}', 1000000), (2, 2.50, '{"a":2}', 7), (3, NULL, '{"b":[100.0],"a":1}', NULL)`)
	for _, q := range []string{
		"SELECT id FROM TBL WHERE u = 1 ORDER BY id",
		"SELECT id FROM TBL WHERE u = 1.00 ORDER BY id",
		"SELECT id FROM TBL WHERE u IN (2.5000, 3) ORDER BY id",
		`SELECT id FROM TBL WHERE j = '{"a":1,"b":[100]}' ORDER BY id`,
		`SELECT id FROM TBL WHERE j = '{"a":2.0}' ORDER BY id`,
		"SELECT count(*) FROM (SELECT j FROM TBL GROUP BY j) g",
		"SELECT count(DISTINCT j), count(DISTINCT u) FROM TBL",
		// Item 13: a unary minus folded through parentheses.
		"SELECT id FROM TBL WHERE mrn = -(-1000000)",
		"SELECT id FROM TBL WHERE mrn = - ( - ( 7 ) ) OR mrn IN (-(1), (-(2)))",
	} {
		both(t, ctx, px, direct, q)
	}
	both(t, ctx, px, direct, "SELECT id FROM TBL WHERE u = $1", "1.000")
	both(t, ctx, px, direct, "SELECT id FROM TBL WHERE j = $1", `{"b": [1E+2], "a": 1.0}`)
	// The unique index sees equal values as equal.
	both(t, ctx, px, direct, "INSERT INTO TBL (id, u) VALUES (4, 1.00)")
	both(t, ctx, px, direct, "INSERT INTO TBL (id, u) VALUES (4, $1)", "2.5")
	// Read back: 1.0 as 1, 2.50 as 2.5 (PostgreSQL keeps the scale).
	got := rowsOf(t, ctx, px, "SELECT u, j FROM tm WHERE id IN (1, 2) ORDER BY id")
	want := [][]string{{"1", `{"a": 1, "b": [100]}`}, {"2.5", `{"a": 2}`}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read back %q, want %q", got, want)
	}
}

func rowsOf(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) [][]string {
	t.Helper()
	rows, _, err := queryText(ctx, c, sql)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// queryText runs sql with results in text and returns the rows (NULL
// spelled NULL) and the columns' descriptions.
func queryText(ctx context.Context, c *pgx.Conn, sql string, args ...any) ([][]string, []pgconn.FieldDescription, error) {
	rows, err := c.Query(ctx, sql, append([]any{pgx.QueryResultFormats{0}}, args...)...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		var r []string
		for _, v := range rows.RawValues() {
			if v == nil {
				r = append(r, "NULL")
			} else {
				r = append(r, string(v))
			}
		}
		out = append(out, r)
	}
	return out, rows.FieldDescriptions(), rows.Err()
}

// TestByteaCastRefused: issue 11, item 17. Whatever a client sends for a
// PHI column is plaintext that phiproxy encrypts: a value cast to bytea is
// refused (0A000, with a hint) and nothing is stored.
func TestByteaCastRefused(t *testing.T) {
	ctx := testCtx(t)
	dsn := startTypmodProxy(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			px := connect(t, ctx, dsn, mode)
			for _, c := range []struct {
				sql  string
				args []any
			}{
				{`INSERT INTO tm (id, t) VALUES (90, E'PH\\001SSN-PLAINTEXT'::bytea)`, nil},
				{`INSERT INTO tm (id, t) VALUES ($1, $2::bytea)`, []any{91, []byte("PH\x01\x01SSN-PLAINTEXT")}},
				{`INSERT INTO tm (id, t) SELECT 92, '\x5048010153534e'::bytea`, nil},
				{`UPDATE tm SET t = CAST('\x504801' AS bytea) WHERE id = 1`, nil},
				{`SELECT id FROM tm WHERE t = '\x504801'::bytea`, nil},
				{`SELECT id FROM tm WHERE t = ANY($1::bytea[])`, []any{[][]byte{[]byte("PH\x01")}}},
			} {
				_, err := px.Exec(ctx, c.sql, c.args...)
				expectCode(t, err, "0A000", c.sql)
				pe := pgError(err)
				if !strings.Contains(pe.Hint, "drop the ::bytea cast") || !strings.Contains(pe.Message, "public.tm.t") {
					t.Fatalf("%s: refusal without the column or the hint: %+v", c.sql, pe)
				}
			}
			stillAnswers(t, ctx, px, "SELECT count(*) FROM tm WHERE t = $1", "x")
		})
	}
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	wantCount(t, ctx, direct, 0, "rows stored around the refusals", "SELECT count(*) FROM tm")
}

// TestTypeModifiersCopyFrom: COPY FROM applies a column's modifier as
// PostgreSQL's input with the column's typmod does (22001, padding,
// rounding).
func TestTypeModifiersCopyFrom(t *testing.T) {
	ctx := testCtx(t)
	dsn := startTypmodProxy(t)
	px, direct := twinConns(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)
	copyBoth := func(data string) {
		t.Helper()
		_, gerr := px.PgConn().CopyFrom(ctx, strings.NewReader(data), "COPY tm (id, v, c, n, ts) FROM STDIN")
		_, werr := direct.PgConn().CopyFrom(ctx, strings.NewReader(data), "COPY tm_plain (id, v, c, n, ts) FROM STDIN")
		if sqlstate(gerr) != sqlstate(werr) || (gerr == nil) != (werr == nil) {
			t.Fatalf("COPY %q: through phiproxy %v, PostgreSQL %v", data, gerr, werr)
		}
	}
	copyBoth("1\tab \tab\t1.235\t2020-01-02 12:00:00.5\n2\t\\N\tx\t-0.004\t1999-12-31 23:59:59.5\n")
	copyBoth("3\tabcd\t\\N\t\\N\t\\N\n")
	copyBoth("4\t\\N\tabcde\t\\N\t\\N\n")
	copyBoth("5\t\\N\t\\N\t1000\t\\N\n")
	both(t, ctx, px, direct, "SELECT id, v, c, n, ts FROM TBL ORDER BY id")
	both(t, ctx, px, direct, "SELECT id FROM TBL WHERE c = 'x' AND n = 0")
}

package phi

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sequelizeFindOrCreate is the string Sequelize v6 sends for
// findOrCreate's INSERT (abstract/query-generator.js insertQuery with
// options.exception; bindParam is off, so the values are inlined and node-
// postgres sends it with the simple protocol). cols is "" for the form
// without a model's attribute list ((testfunc.response).*).
func sequelizeFindOrCreate(table, insertCols, values string, cols []string) string {
	sel := "(testfunc.response).*"
	if cols != nil {
		var parts []string
		for _, c := range cols {
			parts = append(parts, `(testfunc.response)."`+c+`"`)
		}
		sel = strings.Join(parts, ", ")
	}
	delim := "$func_5d0e6a1c9b2f4e3a8c7d6b5a4f3e2d1c$"
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION pg_temp.testfunc(OUT response "%[1]s", OUT sequelize_caught_exception text) RETURNS RECORD AS %[2]s BEGIN INSERT INTO "%[1]s" (%[3]s) VALUES (%[4]s) RETURNING * INTO response; EXCEPTION WHEN unique_violation THEN GET STACKED DIAGNOSTICS sequelize_caught_exception = PG_EXCEPTION_DETAIL; END %[2]s LANGUAGE plpgsql; SELECT %[5]s, testfunc.sequelize_caught_exception FROM pg_temp.testfunc(); DROP FUNCTION IF EXISTS pg_temp.testfunc();`,
		table, delim, insertCols, values, sel)
}

// simpleRows sends sql with the simple protocol and returns each result's
// rows as text (NULL as "<null>").
func simpleRows(t *testing.T, c *pgx.Conn, sql string) [][][]string {
	t.Helper()
	res, err := c.PgConn().Exec(testCtx(t), sql).ReadAll()
	if err != nil {
		t.Fatalf("%.120s…: %v", sql, err)
	}
	return textResults(res)
}

func textResults(res []*pgconn.Result) [][][]string {
	var out [][][]string
	for _, r := range res {
		var rows [][]string
		for _, row := range r.Rows {
			var vals []string
			for _, v := range row {
				if v == nil {
					vals = append(vals, "<null>")
				} else {
					vals = append(vals, string(v))
				}
			}
			rows = append(rows, vals)
		}
		out = append(out, rows)
	}
	return out
}

// TestORMFindOrCreateSequelize: Sequelize's findOrCreate string, for a new
// row and for a duplicate of a unique deterministic column, through
// phiproxy and directly on the plaintext twin. The values are stored
// encrypted, the row comes back decrypted, and the unique violation's
// detail comes back with the key's envelope redacted, never the
// ciphertext; the server log never holds the plaintext.
func TestORMFindOrCreateSequelize(t *testing.T) {
	ctx, via, direct := simpleTwins(t)
	mustExec(t, ctx, direct, "TRUNCATE sq_patients, sq_patients_plain RESTART IDENTITY")

	const (
		govID = "517-44-9021"
		cond  = "sequelize-condition-7f3a"
	)
	insCols := `"id","name","gov_id","condition","born"`
	attrs := []string{"id", "name", "gov_id", "condition", "born"}
	for i, tc := range []struct {
		name   string
		values string
		cols   []string
		dup    bool
	}{
		{"new row, model attributes", `DEFAULT,'Ann O''Neil','` + govID + `','` + cond + `','1980-01-02'`, attrs, false},
		{"duplicate, model attributes", `DEFAULT,'Bob','` + govID + `','other','1990-03-04'`, attrs, true},
		{"new row, star", `DEFAULT,'Cid','` + govID + `-2',NULL,'2001-02-03'`, nil, false},
		{"duplicate, star", `DEFAULT,'Dee','` + govID + `-2','x',NULL`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := simpleRows(t, via, sequelizeFindOrCreate("sq_patients", insCols, tc.values, tc.cols))
			want := simpleRows(t, direct, sequelizeFindOrCreate("sq_patients_plain", insCols, tc.values, tc.cols))
			if len(got) != 3 || len(want) != 3 || len(got[1]) != 1 || len(want[1]) != 1 {
				t.Fatalf("results: through phiproxy %v, direct %v", got, want)
			}
			g, w := got[1][0], want[1][0]
			last := len(g) - 1
			if !reflect.DeepEqual(g[:last], w[:last]) {
				t.Fatalf("row %d: through phiproxy %v, direct %v", i, g, w)
			}
			if !tc.dup {
				if g[last] != "<null>" || w[last] != "<null>" {
					t.Fatalf("exception: through phiproxy %q, direct %q", g[last], w[last])
				}
				return
			}
			wantDetail := fmt.Sprintf("Key (gov_id)=(%s) already exists.", strings.SplitN(tc.values, "'", 5)[3])
			if w[last] != wantDetail {
				t.Fatalf("direct exception %q, want %q", w[last], wantDetail)
			}
			if g[last] != "Key (gov_id)=(<encrypted>) already exists." {
				t.Fatalf("exception through phiproxy: %q", g[last])
			}
		})
	}
	// The stored values are ciphertext and read back as the twin's.
	var raw []byte
	if err := direct.QueryRow(ctx, "SELECT gov_id FROM sq_patients WHERE name = 'Ann O''Neil'").Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), govID) {
		t.Fatalf("sq_patients.gov_id holds the plaintext")
	}
	rows := `SELECT id, name, gov_id, condition, born FROM %s ORDER BY id`
	got := simpleRows(t, via, fmt.Sprintf(rows, "sq_patients"))
	want := simpleRows(t, direct, fmt.Sprintf(rows, "sq_patients_plain"))
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rows: through phiproxy %v, direct %v", got, want)
	}
	// The deterministic column still finds the row.
	got = simpleRows(t, via, `SELECT name FROM sq_patients WHERE gov_id = '`+govID+`'`)
	if !reflect.DeepEqual(got, [][][]string{{{"Ann O'Neil"}}}) {
		t.Fatalf("lookup by gov_id: %v", got)
	}
	// The twin's statements carry the plaintext, of course: only lines
	// about the encrypted table count.
	log, err := os.ReadFile(testCluster.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "sq_patients_plain") {
			continue
		}
		for _, v := range []string{govID, cond} {
			if strings.Contains(line, v) {
				t.Fatalf("the server log holds the plaintext %q:\n%s", v, line)
			}
		}
	}

	// A near miss is refused as CREATE FUNCTION is.
	bad := strings.Replace(sequelizeFindOrCreate("sq_patients", insCols, `DEFAULT,'Eve','1','y','2000-01-01'`, nil),
		"WHEN unique_violation", "WHEN others", 1)
	_, err = via.PgConn().Exec(ctx, bad).ReadAll()
	expectCode(t, err, "0A000", "a different exception handler")
}

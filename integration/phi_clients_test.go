package integration

import (
	"strconv"
	"strings"
	"testing"
)

// Each client runs the same CRUD program twice: through the proxy on the
// encrypted tables, and direct on the plaintext twin. The outputs — values,
// column types as the client saw them, command tags and row counts — must
// be identical, and the encrypted rows must hold only envelopes.

// pythonBin is Debian's interpreter, which has python3-psycopg; the pyenv
// python3 on PATH does not.
const pythonBin = "/usr/bin/python3"

type phiClient struct {
	name string
	base int // first id of the client's rows
	run  func(t *testing.T, hostport, suffix string, base int) string
	// want are lines the output must hold (the comparison alone would also
	// pass if both runs printed nothing useful).
	want []string
}

func phiClients() []phiClient {
	jdbcCRUD := func(params string) func(t *testing.T, hostport, suffix string, base int) string {
		return func(t *testing.T, hostport, suffix string, base int) string {
			url := "jdbc:postgresql://" + hostport + "/" + phiDB + "?sslmode=disable" + params
			return jdbc(t, "PhiCrud", "crud", url, "app", "app-pw", suffix, strconv.Itoa(base))
		}
	}
	return []phiClient{
		{name: "psql", base: 1000,
			run: func(t *testing.T, hostport, suffix string, base int) string {
				out, err := psql(t, appDSN(hostport, phiDB), "-A", "-v", "P=patients"+suffix, "-v", "V=visits"+suffix, "-f", tempFile(t, "crud.sql", phiPsqlCRUD))
				if err != nil {
					t.Fatalf("psql on patients%s: %v\n%s", suffix, err, out)
				}
				return out
			},
			want: []string{"1001|psql-1|100-00-0001|cured|1980-01-03|42"}},
		{name: "node-postgres", base: 2000,
			run: func(t *testing.T, hostport, suffix string, base int) string {
				return runCmd(t, "node", "clients/node/crud.js", "crud", appDSN(hostport, phiDB), suffix, strconv.Itoa(base))
			},
			want: []string{
				"select range: SELECT 5 fields=id:23,name:25,ssn:25,diagnosis:25,dob:1082,mrn:20",
				"  2001|node-1|2000-00-0001|flu|1980-01-02|4242",
				"  2004|node-4|2000-00-0004|ünïcödé \"q\" 'x'|2000-02-29|-9223372036854775808",
				"  2001|2000-00-0001|2024-01-01",
				"  2001|node-1|2000-00-0001|cured|1980-01-03|4242",
			}},
		{name: "psycopg 3", base: 3000,
			run: func(t *testing.T, hostport, suffix string, base int) string {
				return runCmd(t, pythonBin, "clients/python/crud.py", "crud", appDSN(hostport, phiDB), suffix, strconv.Itoa(base))
			},
			want: []string{
				"select binary: SELECT 6 6 fields=id:23,name:25,ssn:25,diagnosis:25,dob:1082,mrn:20",
				"  3004|py-4|3000-00-0004|ünïcödé \"q\" 'x'|2000-02-29|-9223372036854775808",
				"  3007|py-7|3000-00-0007|binary|2012-12-12|777",
				"  3001|py-1|3000-00-0001|cured|1980-01-03|4242",
			}},
		{name: "JDBC", base: 4000, run: jdbcCRUD(""),
			want: []string{
				"executeBatch: [1, 1, 1, 1]",
				"select: fields=id:serial,name:text,ssn:text,diagnosis:text,dob:date,mrn:int8",
				"  4004|jdbc-4|4000-00-0004|ünïcödé \"q\" 'x'|2000-02-29|-9223372036854775808",
				"  4001|jdbc-1|4000-00-0001|cured|1980-01-03|4242",
			}},
		{name: "JDBC with prepareThreshold=1", base: 5000, run: jdbcCRUD("&prepareThreshold=1"),
			want: []string{
				"executeBatch: [1, 1, 1, 1]",
				"  5006|jdbc-6|5000-00-0006||2012-12-12|9223372036854775807",
				"  5001|jdbc-1|5000-00-0001|cured|1980-01-03|4242",
			}},
		// psycopg 3 server-side cursors (conn.cursor(name=…): DECLARE, then
		// FETCH FORWARD n while iterating; WITH HOLD; binary), issue 17,
		// item 2.
		{name: "psycopg 3 server-side cursors", base: 8600,
			run: func(t *testing.T, hostport, suffix string, base int) string {
				return runCmd(t, pythonBin, "clients/python/cursor.py", appDSN(hostport, phiDB), suffix, strconv.Itoa(base))
			},
			want: []string{
				"named cursor: 7 rows",
				"  8601|cur-1|8600-00-0001|flu|1980-01-01|101",
				"named cursor lookup: 3 rows",
				"  8604|8600-00-0001|104",
				"named cursor with hold: 7 rows",
				"named cursor binary: 5 rows",
				"  8607|cur-7|8600-00-0001|flu|1980-01-07|107",
			}},
	}
}

func TestPHIClientsMatchPlaintext(t *testing.T) {
	p := startPHIProxy(t)
	e := fixture
	for _, c := range phiClients() {
		t.Run(c.name, func(t *testing.T) {
			want := c.run(t, e.cluster.Addr(), "_plain", c.base)
			got := c.run(t, p.addr(), "", c.base)
			if d := diffLines(got, want); d != "" {
				t.Fatalf("%s through the proxy differs from PostgreSQL on the plaintext twin: %s\nthrough the proxy:\n%s", c.name, d, got)
			}
			for _, w := range c.want {
				if !strings.Contains(got, w+"\n") {
					t.Fatalf("%s output lacks %q:\n%s", c.name, w, got)
				}
			}
			assertCiphertext(t, c.base, c.base+99)
		})
	}
}

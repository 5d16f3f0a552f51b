package integration

import (
	"strconv"
	"strings"
	"testing"
)

// TestPHIServerSideCursorPsycopg runs psycopg 3 server-side cursors
// (conn.cursor(name=…): DECLARE, then FETCH FORWARD n while iterating;
// WITH HOLD; binary) through phiproxy and direct on the plaintext twin:
// the outputs must be identical (issue 17, item 2).
func TestPHIServerSideCursorPsycopg(t *testing.T) {
	p := startPHIProxy(t)
	e := fixture
	const base = 8600
	run := func(hostport, suffix string) string {
		return runCmd(t, pythonBin, "clients/python/cursor.py", appDSN(hostport, phiDB), suffix, strconv.Itoa(base))
	}
	want := run(e.cluster.Addr(), "_plain")
	got := run(p.addr(), "")
	if d := diffLines(got, want); d != "" {
		t.Fatalf("psycopg server-side cursors through the proxy differ from PostgreSQL on the plaintext twin: %s\nthrough the proxy:\n%s", d, got)
	}
	for _, w := range []string{
		"named cursor: 7 rows",
		"  8601|cur-1|8600-00-0001|flu|1980-01-01|101",
		"named cursor lookup: 3 rows",
		"  8604|8600-00-0001|104",
		"named cursor with hold: 7 rows",
		"named cursor binary: 5 rows",
		"  8607|cur-7|8600-00-0001|flu|1980-01-07|107",
	} {
		if !strings.Contains(got, w+"\n") {
			t.Fatalf("output lacks %q:\n%s", w, got)
		}
	}
	assertCiphertext(t, base, base+99)
}

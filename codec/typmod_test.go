package codec

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/pgerr"
)

// twinCases are, per logical type of a PHI column, values written into the
// column and values compared with it. Deterministic encryption finds a row
// exactly when the canonical plaintexts are equal, so the codec must give
// equal canonical forms exactly where PostgreSQL's = is true on a
// plaintext column of the same type.
var twinCases = []struct {
	typ, sqlType string
	writes       []string
	compares     []string
}{
	{"varchar(3)", "varchar(3)",
		[]string{"abc", "ab", "abc  ", "abcd", "a b", "", "日本語", "日本語x", "日本語 ", " ab"},
		[]string{"abc", "abc ", "ab", "abcd", "", "日本語", " ab", "abcdefgh"}},
	{"bpchar(4)", "char(4)",
		[]string{"ab", "ab  ", "abcd", "abcd   ", "abcde", "", " a", "é"},
		[]string{"ab", "ab ", "ab      ", "abcd", "abcde", "", " a", "  ", "é  "}},
	{"numeric(5,2)", "numeric(5,2)",
		[]string{"1", "1.0", "1.234", "1.235", "-1.235", "999.99", "999.995", "0.001", "0.005", "NaN", "Infinity", "1e2", "-0", "abc"},
		[]string{"1", "1.00", "1.001", "1.24", "-1.24", "1000", "100", "0", "0.01", "NaN", "1.2300000", "x"}},
	{"numeric(3,0)", "numeric(3)",
		[]string{"1.5", "2.5", "-2.5", "999.4", "999.5", "0.4"},
		[]string{"2", "3", "-3", "999", "0", "2.0", "2.5"}},
	{"numeric", "numeric",
		[]string{"1.0", "1", "1.00", "100", "1e2", "0.0", "-0", "1.50", "1.5", "NaN", "-Infinity"},
		[]string{"1", "1.000", "1e0", "100.0", "0", "-0.0", "1.5", "1.500", "NaN", "-Infinity", "2"}},
	{"timestamp(0)", "timestamp(0)",
		[]string{"2020-01-02 12:00:00.7", "2020-01-02 12:00:00.5", "2020-01-02 12:00:00.4999", "1999-12-31 23:59:59.5", "2020-01-02 12:00:01", "infinity", "2020-12-31 23:59:59.9"},
		[]string{"2020-01-02 12:00:01", "2020-01-02 12:00:00.7", "2020-01-02 12:00:00", "1999-12-31 23:59:59", "2000-01-01 00:00:00", "infinity", "2021-01-01 00:00:00"}},
	{"timestamp(3)", "timestamp(3)",
		[]string{"2020-01-02 12:00:00.12345", "2020-01-02 12:00:00.1235", "2020-01-02 12:00:00.9995", "1980-01-02 03:04:05.0005"},
		[]string{"2020-01-02 12:00:00.123", "2020-01-02 12:00:00.124", "2020-01-02 12:00:01", "1980-01-02 03:04:05.0005", "1980-01-02 03:04:05"}},
	{"timestamptz(2)", "timestamptz(2)",
		[]string{"2020-01-02 12:00:00.125+02", "2020-01-02 10:00:00.13+00", "2020-01-02 10:00:00.135Z", "1960-06-01 00:00:00.005+00"},
		[]string{"2020-01-02 10:00:00.13+00", "2020-01-02 12:00:00.13+02", "2020-01-02 10:00:00.14+00", "1960-06-01 00:00:00+00", "1960-06-01 00:00:00.01+00"}},
	{"jsonb", "jsonb",
		[]string{`{"a":1.0,"b":[1e2]}`, `{"a":1,"b":[100]}`, `{"a":1.00}`, `{"b":[100.0],"a":1}`, `[1.10]`, `[1.1]`, `{"a":"1.0"}`, `0.0`, `-0`, `0`, `[1e-2, 10.000]`},
		[]string{`{"a":1,"b":[100]}`, `{"a":1}`, `[1.1000]`, `{"a":"1.0"}`, `{"a":"1"}`, `0`, `[0.01, 10]`, `[]`}},
}

// TestDeterministicEqualityDifferential writes each value into a plaintext
// twin column (real PostgreSQL) and into the codec (assignment), then
// checks, for each compared value, that the rows = finds are the rows whose
// canonical form equals the compared value's, that errors agree, and that
// GROUP BY makes as many groups.
func TestDeterministicEqualityDifferential(t *testing.T) {
	conn := serverConn(t, "timezone=UTC", "datestyle=ISO")
	ctx := context.Background()
	for k, tc := range twinCases {
		t.Run(tc.typ, func(t *testing.T) {
			// A table per case: pgx caches statement descriptions by text.
			twin := fmt.Sprintf("twin%d", k)
			if _, err := conn.Exec(ctx, "CREATE TEMP TABLE "+twin+" (id int, v "+tc.sqlType+")"); err != nil {
				t.Fatal(err)
			}
			canon := map[int]string{}
			for i, w := range tc.writes {
				// An untyped parameter is read with the column's type and
				// modifier, as an INSERT's literal is.
				_, srvErr := conn.Exec(ctx, "INSERT INTO "+twin+" VALUES ($1, $2)", i, w)
				got, err := Codec{}.AppendBound(nil, tc.typ, Coercion{Assign: true}, 0, TextFormat, []byte(w))
				if !sameOutcome(t, srvErr, err) {
					t.Fatalf("write %q: server %v, codec %q %v", w, srvErr, got, err)
				}
				if err != nil {
					continue
				}
				canon[i] = string(got)
				// The stored text is what the client reads back; for
				// numeric and jsonb without a modifier the codec's form
				// has no trailing fraction zeros (documented).
				var stored string
				// (v itself, not v::text, which trims a char(n)'s padding)
				q := "SELECT v FROM " + twin + " WHERE id = $1"
				if tc.typ == "numeric" {
					q = "SELECT trim_scale(v)::text FROM " + twin + " WHERE id = $1"
				}
				if err := conn.QueryRow(ctx, q, pgx.QueryResultFormats{TextFormat}, i).Scan(&stored); err != nil {
					t.Fatal(err)
				}
				if tc.typ != "jsonb" && stored != string(got) {
					t.Errorf("write %q: stored %q by PostgreSQL, canonical %q", w, stored, got)
				}
			}
			for _, c := range tc.compares {
				var ids []int32
				srvErr := conn.QueryRow(ctx, "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM "+twin+" WHERE v = $1", c).Scan(&ids)
				got, err := Codec{}.AppendBound(nil, tc.typ, Coercion{}, 0, TextFormat, []byte(c))
				if !sameOutcome(t, srvErr, err) {
					t.Fatalf("compare %q: server %v, codec %v", c, srvErr, err)
				}
				if err != nil {
					continue
				}
				var want []int
				for _, id := range ids {
					want = append(want, int(id))
				}
				var found []int
				for id, cv := range canon {
					if cv == string(got) {
						found = append(found, id)
					}
				}
				sort.Ints(found)
				if fmt.Sprint(found) != fmt.Sprint(want) {
					t.Errorf("v = %q: PostgreSQL finds rows %v, equal ciphertexts would find %v (canonical %q)", c, want, found, got)
				}
			}
			var groups int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM (SELECT v FROM "+twin+" GROUP BY v) g").Scan(&groups); err != nil {
				t.Fatal(err)
			}
			distinct := map[string]bool{}
			for _, cv := range canon {
				distinct[cv] = true
			}
			if groups != len(distinct) {
				t.Errorf("GROUP BY: PostgreSQL makes %d groups, canonical forms %d", groups, len(distinct))
			}
		})
	}
}

// sameOutcome reports whether the server and the codec agree on success,
// and on the SQLSTATE of a failure.
func sameOutcome(t *testing.T, srv, codec error) bool {
	t.Helper()
	if (srv == nil) != (codec == nil) {
		return false
	}
	if srv == nil {
		return true
	}
	pe, ok := srv.(*pgconn.PgError)
	if !ok {
		t.Fatal(srv)
	}
	ce := pgerr.As(codec)
	if ce == nil {
		return false
	}
	if pe.Code != ce.Code.String() {
		t.Logf("server %s %s, codec %s %s", pe.Code, pe.Message, ce.Code, ce.Message)
		return false
	}
	return true
}

// TestExplicitCastsDifferential checks casts with modifiers written around
// a value bound for a PHI column against PostgreSQL's explicit casts:
// varchar and char truncate, numeric and timestamp round.
func TestExplicitCastsDifferential(t *testing.T) {
	conn := serverConn(t, "timezone=UTC", "datestyle=ISO")
	ctx := context.Background()
	cases := []struct{ column, cast, sqlCast, in string }{
		{"text", "varchar(3)", "varchar(3)", "abcdefgh"},
		{"text", "varchar(3)", "varchar(3)", "ab"},
		{"varchar", "varchar(2)", "varchar(2)", "日本語"},
		{"bpchar(4)", "bpchar(2)", "char(2)", "abc"},
		{"bpchar(4)", "bpchar(1)", "char", "xyz"},
		{"numeric", "numeric(5,2)", "numeric(5,2)", "1.2345"},
		{"numeric", "numeric(5,2)", "numeric(5,2)", "-1.005"},
		{"numeric", "numeric(5,2)", "numeric(5,2)", "1234.5"},
		{"numeric(6,3)", "numeric(4,1)", "numeric(4,1)", "1.25"},
		{"numeric", "numeric(3,0)", "numeric(3)", "12.5"},
		{"timestamp", "timestamp(0)", "timestamp(0)", "2020-01-02 12:00:00.7"},
		{"timestamp", "timestamp(2)", "timestamp(2)", "1999-12-31 23:59:59.995"},
		{"timestamptz", "timestamptz(0)", "timestamptz(0)", "2020-01-02 12:00:00.5+01"},
		{"varchar(3)", "varchar(5)", "varchar(5)", "abcde"},
	}
	for k, c := range cases {
		t.Run(c.cast+" "+c.in+" into "+c.column, func(t *testing.T) {
			// The cast value written into a plaintext twin of the column.
			sqlCol := strings.Replace(c.column, "bpchar", "char", 1)
			twin := fmt.Sprintf("castwin%d", k)
			if _, err := conn.Exec(ctx, "CREATE TEMP TABLE "+twin+" (v "+sqlCol+")"); err != nil {
				t.Fatal(err)
			}
			base := strings.Split(c.sqlCast, "(")[0]
			if base == "char" {
				base = "bpchar"
			}
			var want string
			_, srvErr := conn.Exec(ctx, fmt.Sprintf("INSERT INTO "+twin+" VALUES ($1::text::%s::%s)", base, c.sqlCast), c.in)
			if srvErr == nil {
				q := "SELECT v FROM " + twin
				if c.column == "numeric" {
					q = "SELECT trim_scale(v)::text FROM " + twin
				}
				if err := conn.QueryRow(ctx, q, pgx.QueryResultFormats{TextFormat}).Scan(&want); err != nil {
					t.Fatal(err)
				}
			}
			got, err := Codec{}.AppendBound(nil, c.column, Coercion{Cast: c.cast, Assign: true}, 0, TextFormat, []byte(c.in))
			if !sameOutcome(t, srvErr, err) {
				t.Fatalf("server %v, codec %q %v", srvErr, got, err)
			}
			if err == nil && string(got) != want {
				t.Fatalf("PostgreSQL stores %q, codec %q", want, got)
			}
		})
	}
}

func TestTypmod(t *testing.T) {
	for typ, want := range map[string]int32{"varchar(3)": 7, "bpchar(4)": 8, "numeric(5,2)": 5<<16 | 2 + 4, "timestamp(0)": 0, "timestamptz(3)": 3, "text": -1, "numeric": -1} {
		if got := Typmod(typ); got != want {
			t.Errorf("Typmod(%s) = %d, want %d", typ, got, want)
		}
	}
}

// FuzzTypeModifiers checks, for every modified type and any input, that a
// stored value is canonical: writing it again stores the same form, and
// comparing the column with it finds it (what a client reads back is what
// it can look up).
func FuzzTypeModifiers(f *testing.F) {
	for _, tc := range twinCases {
		for _, w := range append(tc.writes, tc.compares...) {
			f.Add(w)
		}
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, tc := range twinCases {
			stored, err := Codec{}.AppendBound(nil, tc.typ, Coercion{Assign: true}, 0, TextFormat, []byte(in))
			if err != nil {
				if pgerr.As(err) == nil {
					t.Fatalf("%s %q: error without SQLSTATE: %v", tc.typ, in, err)
				}
				continue
			}
			again, err := Codec{}.AppendBound(nil, tc.typ, Coercion{Assign: true}, 0, TextFormat, stored)
			if err != nil || string(again) != string(stored) {
				t.Fatalf("%s %q: stored %q, written again %q, %v", tc.typ, in, stored, again, err)
			}
			cmp, err := Codec{}.AppendBound(nil, tc.typ, Coercion{}, 0, TextFormat, stored)
			if err != nil || string(cmp) != string(stored) {
				t.Fatalf("%s %q: stored %q, compared as %q, %v", tc.typ, in, stored, cmp, err)
			}
		}
	})
}

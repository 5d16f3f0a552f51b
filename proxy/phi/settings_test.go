package phi

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// rawText runs sql in the simple protocol and returns the first column of
// every row as the server's (or the proxy's) text, NULL as "NULL".
func rawText(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) ([]string, error) {
	t.Helper()
	res, err := c.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range res {
		for _, row := range r.Rows {
			if row[0] == nil {
				out = append(out, "NULL")
			} else {
				out = append(out, string(row[0]))
			}
		}
	}
	return out, nil
}

func mustText(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) []string {
	t.Helper()
	out, err := rawText(t, ctx, c, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// connectWithOptions connects in the simple protocol with the startup
// parameter options (as libpq's PGOPTIONS would send it).
func connectWithOptions(t *testing.T, ctx context.Context, dsn, options string) *pgx.Conn {
	t.Helper()
	return connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol, func(cc *pgx.ConnConfig) {
		cc.RuntimeParams["options"] = options
	})
}

func TestSessionSettings(t *testing.T) {
	ctx, p := start(t)
	// Startup parameters: the session's TimeZone and DateStyle come from
	// the client's options, not from the server's defaults.
	const options = "-c TimeZone=America/New_York -c DateStyle=SQL,DMY"
	conn := connectWithOptions(t, ctx, p.dsn(), options)
	direct := connectWithOptions(t, ctx, directDSN(), options)
	both := []struct {
		c   *pgx.Conn
		tbl string
	}{{conn, "types"}, {direct, "types_plain"}}
	for _, x := range both {
		// Input without an offset is read in the session's zone.
		mustExec(t, ctx, x.c, "INSERT INTO "+x.tbl+" (id, t_tstz, t_date, t_text) VALUES "+
			"(7001, '2024-07-04 12:00:00', '2024-07-04', 'a'), (7002, '2024-01-15 08:30:00+00', '1999-12-31', 'b')")
	}

	t.Run("text output of a PHI date is refused while DateStyle is not ISO", func(t *testing.T) {
		_, err := rawText(t, ctx, conn, "SELECT t_date FROM types WHERE id = 7001")
		expectCode(t, err, "0A000", "DateStyle SQL")
		// Binary results do not depend on DateStyle: compared with the twin.
		var got, want time.Time
		if err := conn.QueryRow(ctx, "SELECT t_date FROM types WHERE id = $1", pgx.QueryExecModeCacheStatement, 7001).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if err := direct.QueryRow(ctx, "SELECT t_date FROM types_plain WHERE id = $1", pgx.QueryExecModeCacheStatement, 7001).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if !got.Equal(want) {
			t.Fatalf("binary date through phiproxy %v, direct %v", got, want)
		}
		stillWorks(t, ctx, conn)
	})
	for _, x := range both {
		mustExec(t, ctx, x.c, "SET DateStyle = ISO")
	}

	t.Run("timestamptz is shown in the TimeZone of the startup packet", func(t *testing.T) {
		got := mustText(t, ctx, conn, "SELECT t_tstz FROM types WHERE id IN (7001, 7002) ORDER BY id")
		want := mustText(t, ctx, direct, "SELECT t_tstz FROM types_plain WHERE id IN (7001, 7002) ORDER BY id")
		if !reflect.DeepEqual(got, want) || got[0] != "2024-07-04 12:00:00-04" || got[1] != "2024-01-15 03:30:00-05" {
			t.Fatalf("through phiproxy %q, direct %q", got, want)
		}
	})

	t.Run("SET TimeZone is followed", func(t *testing.T) {
		for _, x := range both {
			mustExec(t, ctx, x.c, "SET TimeZone = 'Asia/Tokyo'")
		}
		got := mustText(t, ctx, conn, "SELECT t_tstz FROM types WHERE id IN (7001, 7002) ORDER BY id")
		want := mustText(t, ctx, direct, "SELECT t_tstz FROM types_plain WHERE id IN (7001, 7002) ORDER BY id")
		if !reflect.DeepEqual(got, want) || got[0] != "2024-07-05 01:00:00+09" {
			t.Fatalf("through phiproxy %q, direct %q", got, want)
		}
	})

	t.Run("a client_encoding other than UTF8 refuses statements on PHI relations", func(t *testing.T) {
		mustExec(t, ctx, conn, "SET client_encoding = 'LATIN1'")
		_, err := rawText(t, ctx, conn, "SELECT t_text FROM types WHERE id = 7001")
		expectCode(t, err, "0A000", "client_encoding LATIN1")
		if got := mustText(t, ctx, conn, "SELECT 'no PHI here'"); len(got) != 1 || got[0] != "no PHI here" {
			t.Fatalf("pass-through under LATIN1: %q", got)
		}
		mustExec(t, ctx, conn, "SET client_encoding = 'UTF8'")
		if got := mustText(t, ctx, conn, "SELECT t_text FROM types WHERE id = 7001"); len(got) != 1 || got[0] != "a" {
			t.Fatalf("back in UTF8: %q", got)
		}
	})

	t.Run("standard_conforming_strings off refuses statements on PHI relations", func(t *testing.T) {
		mustExec(t, ctx, conn, "SET standard_conforming_strings = off")
		// PostgreSQL reads 'x\'' as x' here; libpg_query would not.
		_, err := rawText(t, ctx, conn, `SELECT t_text FROM types WHERE t_text IS NOT NULL AND 'x\'' = 'y'`)
		expectCode(t, err, "0A000", "standard_conforming_strings off")
		mustExec(t, ctx, conn, "SET standard_conforming_strings = on")
		if got := mustText(t, ctx, conn, "SELECT t_text FROM types WHERE id = 7002"); len(got) != 1 || got[0] != "b" {
			t.Fatalf("back on: %q", got)
		}
	})
}

package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// scenario runs the same protocol workload on conn and returns a
// transcript; the proxy must produce exactly the direct transcript.
func scenario(t *testing.T, ctx context.Context, conn *pgx.Conn, table string) string {
	t.Helper()
	var out strings.Builder
	logf := func(format string, args ...any) { fmt.Fprintf(&out, format+"\n", args...) }
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	pc := conn.PgConn()

	// Simple protocol, several statements in one Query, one failing.
	results, err := pc.Exec(ctx, fmt.Sprintf(
		"DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int PRIMARY KEY, name text, at date); "+
			"INSERT INTO %[1]s VALUES (1, 'one', '2020-01-02'), (2, NULL, NULL); SELECT id, name, at FROM %[1]s ORDER BY id", table)).ReadAll()
	check(err)
	for _, r := range results {
		logf("simple: %s rows=%v err=%v", r.CommandTag, r.Rows, r.Err)
	}
	_, err = pc.Exec(ctx, "SELECT 1; SELECT 1/0; SELECT 2").ReadAll()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("want a server error, got %v", err)
	}
	logf("simple error: %s %s", pgErr.Code, pgErr.Message)

	// Extended protocol with parameters, text and binary results.
	rows, err := conn.Query(ctx, "SELECT id, name, at FROM "+table+" WHERE id >= $1 ORDER BY id", 1)
	check(err)
	for rows.Next() {
		vals, err := rows.Values()
		check(err)
		logf("extended: %v", vals)
	}
	check(rows.Err())
	_, err = conn.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2, $3)", 1, "dup", time.Now())
	if !errors.As(err, &pgErr) {
		t.Fatalf("want a unique violation, got %v", err)
	}
	logf("extended error: %s %s", pgErr.Code, pgErr.ConstraintName)

	// Pipelining: a pgx.Batch is one round trip of Parse/Bind/Execute…Sync.
	b := &pgx.Batch{}
	for i := 3; i < 53; i++ {
		b.Queue("INSERT INTO "+table+" (id, name) VALUES ($1, $2) RETURNING id", i, fmt.Sprint("n", i))
	}
	b.Queue("SELECT count(*) FROM " + table)
	br := conn.SendBatch(ctx, b)
	for i := 3; i < 53; i++ {
		var id int
		check(br.QueryRow().Scan(&id))
		if id != i {
			t.Fatalf("batch returned %d for %d", id, i)
		}
	}
	var n int
	check(br.QueryRow().Scan(&n))
	check(br.Close())
	logf("batch: count=%d", n)

	// COPY FROM STDIN (CopyFrom) and TO STDOUT.
	src := make([][]any, 2000)
	for i := range src {
		src[i] = []any{1000 + i, strings.Repeat("x", i%50), time.Date(2000, 1, 1+i%28, 0, 0, 0, 0, time.UTC)}
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "name", "at"}, pgx.CopyFromRows(src))
	check(err)
	logf("copy from: %d", copied)
	var buf bytes.Buffer
	tag, err := pc.CopyTo(ctx, &buf, "COPY (SELECT * FROM "+table+" ORDER BY id) TO STDOUT WITH (FORMAT csv)")
	check(err)
	logf("copy to: %s bytes=%d sum=%x", tag, buf.Len(), buf.Bytes()[buf.Len()-64:])
	tag, err = pc.CopyFrom(ctx, strings.NewReader("9000\tfrom text\t2001-02-03\n9001\t\\N\t\\N\n"), "COPY "+table+" FROM STDIN")
	check(err)
	logf("copy from stdin: %s", tag)
	_, err = pc.CopyFrom(ctx, strings.NewReader("bad row\n"), "COPY "+table+" FROM STDIN")
	if !errors.As(err, &pgErr) {
		t.Fatalf("want a COPY error, got %v", err)
	}
	logf("copy error: %s", pgErr.Code)

	// Transaction states, notices.
	_, err = conn.Exec(ctx, "BEGIN")
	check(err)
	logf("tx: %c", pc.TxStatus())
	_, err = conn.Exec(ctx, "SELECT nonexistent")
	logf("tx failed: %c %v", pc.TxStatus(), err != nil)
	_, err = conn.Exec(ctx, "ROLLBACK")
	check(err)
	logf("tx: %c", pc.TxStatus())
	logf("parameter status: %s %s", pc.ParameterStatus("server_encoding"), pc.ParameterStatus("DateStyle"))
	_, err = pc.Exec(ctx, "SET DateStyle = 'German'").ReadAll()
	check(err)
	logf("parameter status after SET: %s", pc.ParameterStatus("DateStyle"))
	_, err = pc.Exec(ctx, "RESET DateStyle").ReadAll()
	check(err)
	return out.String()
}

func TestRelayMatchesDirect(t *testing.T) {
	for _, mode := range []string{"terminate", "relay"} {
		t.Run("auth "+mode, func(t *testing.T) {
			ctx := testCtx(t)
			p := startProxy(t, proxyConfig(t, testCluster.Addr(), "auth: {mode: "+mode+"}"))
			direct := scenario(t, ctx, connect(t, ctx, directDSN()), "t_"+mode)
			proxied := scenario(t, ctx, connect(t, ctx, p.dsn()), "t_"+mode)
			if direct != proxied {
				t.Fatalf("through the proxy:\n%s\ndirect:\n%s", proxied, direct)
			}
			if strings.Contains(p.logs.String(), "from text") || strings.Contains(p.logs.String(), "SELECT") {
				t.Fatalf("the proxy logged SQL or data:\n%s", p.logs.String())
			}
		})
	}
}

func TestNoticeAndNotify(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	var notices []string
	listener := connect(t, ctx, p.dsn(), func(cc *pgx.ConnConfig) {
		cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Severity+":"+n.Message) }
	})
	if _, err := listener.Exec(ctx, "DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$"); err != nil {
		t.Fatal(err)
	}
	if len(notices) != 1 || notices[0] != "NOTICE:hello 42" {
		t.Fatalf("notices = %q", notices)
	}
	if _, err := listener.Exec(ctx, "LISTEN chan1"); err != nil {
		t.Fatal(err)
	}
	notifier := connect(t, ctx, p.dsn())
	notified := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // the listener is waiting, idle
		_, err := notifier.Exec(ctx, "SELECT pg_notify('chan1', 'payload')")
		notified <- err
	}()
	defer func() {
		if err := <-notified; err != nil {
			t.Error(err)
		}
	}()
	n := awaitNotification(t, ctx, listener)
	if n.Channel != "chan1" || n.Payload != "payload" {
		t.Fatalf("notification %+v", n)
	}
}

// awaitNotification waits at most 5 s for a notification on conn.
func awaitNotification(t *testing.T, ctx context.Context, conn *pgx.Conn) *pgconn.Notification {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFunctionCall(t *testing.T) {
	ctx := testCtx(t)
	call := func(dsn string) string {
		conn, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var oid uint32
		res := conn.ExecParams(ctx, "SELECT 'int4pl'::regproc::oid", nil, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		fmt.Sscan(string(res.Rows[0][0]), &oid)
		hj, err := conn.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		defer hj.Conn.Close()
		var got []string
		testenv.Exchange(t, hj.Frontend, func(msg pgproto3.BackendMessage) {
			switch m := msg.(type) {
			case *pgproto3.FunctionCallResponse:
				got = append(got, fmt.Sprintf("result %v", m.Result))
			case *pgproto3.ReadyForQuery:
				got = append(got, fmt.Sprintf("ready %c", m.TxStatus))
			default:
				got = append(got, fmt.Sprintf("%T", m))
			}
		}, &pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{{0, 0, 0, 40}, {0, 0, 0, 2}}, ResultFormatCode: 1})
		return strings.Join(got, "; ")
	}
	p := startProxy(t, proxyConfig(t, testCluster.Addr()))
	direct, proxied := call(directDSN()), call(p.dsn())
	if direct != proxied || direct != "result [0 0 0 42]; ready I" {
		t.Fatalf("through the proxy %q, direct %q", proxied, direct)
	}
}

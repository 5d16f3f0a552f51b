package phi

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/crypto"
)

// TestTriggerNoticeAndNotifyRedacted: a trigger created directly on the
// server that NOTIFYs or RAISEs a NOTICE with the new row's ciphertext
// (issue 18, found by a second review) reaches neither the writer nor a
// listener with the envelope in it: both are redacted to <encrypted>.
func TestTriggerNoticeAndNotifyRedacted(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, direct, `CREATE OR REPLACE FUNCTION hostile_leak() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('hostile_leak', 'ssn=' || encode(NEW.ssn, 'hex'));
	RAISE NOTICE 'ssn %', NEW.ssn USING DETAIL = encode(NEW.ssn, 'escape');
	RETURN NEW;
END$$`)
	mustExec(t, ctx, direct, "CREATE TRIGGER hostile_leak AFTER INSERT ON patients FOR EACH ROW EXECUTE FUNCTION hostile_leak()")
	t.Cleanup(func() {
		if _, err := direct.Exec(context.Background(), "DROP TRIGGER IF EXISTS hostile_leak ON patients"); err != nil {
			t.Error(err)
		}
	})
	rec := testKeys(t).Recognizer()
	listener := connect(t, ctx, p.dsn(), pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, listener, "LISTEN hostile_leak")
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		var notices []*pgconn.Notice
		conn := connectWith(t, ctx, p.dsn(), func(cc *pgx.ConnConfig) {
			cc.DefaultQueryExecMode = mode
			cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n) }
		})
		ssn := []string{"trg-111-22-3333", "trg-444-55-6666"}[i]
		mustExec(t, ctx, conn, "INSERT INTO patients (id, ssn) VALUES ($1, $2)", 7100+i, ssn)
		if len(notices) != 1 {
			t.Fatalf("%v: %d notices", mode, len(notices))
		}
		for _, f := range []string{notices[0].Message, notices[0].Detail} {
			if rec.Contains([]byte(f)) || strings.Contains(f, ssn) || !strings.Contains(f, crypto.EnvelopeRedacted) {
				t.Fatalf("%v: notice field %q", mode, f)
			}
		}
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Contains([]byte(n.Payload)) || n.Payload != "ssn="+crypto.EnvelopeRedacted {
			t.Fatalf("%v: notification payload %q", mode, n.Payload)
		}
		stillWorks(t, ctx, conn)
	}
	if strings.Contains(p.logs.String(), "trg-") {
		t.Fatal("a value reached the log")
	}
}

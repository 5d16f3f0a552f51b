package proxy

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// shoutingInterceptor refuses simple queries that mention "forbidden",
// upper-cases every text value in DataRows, and counts Parse messages:
// rewrite, refuse and observe, in both directions.
type shoutingInterceptor struct {
	parses atomic.Int32
}

func (i *shoutingInterceptor) Intercepts() (MessageSet, MessageSet) {
	return Messages(MsgQuery, MsgParse), Messages(MsgDataRow)
}

func (i *shoutingInterceptor) ClientMessage(msg pgproto3.FrontendMessage, out *Out) error {
	switch m := msg.(type) {
	case *pgproto3.Query:
		if strings.Contains(m.String, "forbidden") {
			// The client waits for this Query's answer, so this is the
			// right point in the response stream.
			if err := out.ToClient(ErrorResponse(pgerr.New(pgerr.InsufficientPrivilege, "statement refused by policy").
				WithHint("Ask for access."))); err != nil {
				return err
			}
			status := byte('I')
			if out.State() == StateInTx {
				status = 'T'
			}
			return out.ToClient(&pgproto3.ReadyForQuery{TxStatus: status})
		}
	case *pgproto3.Parse:
		i.parses.Add(1)
	}
	return out.Forward(msg)
}

func (i *shoutingInterceptor) ServerMessage(msg pgproto3.BackendMessage, out *Out) error {
	row := msg.(*pgproto3.DataRow)
	for k, v := range row.Values {
		if v != nil {
			row.Values[k] = bytes.ToUpper(v)
		}
	}
	return out.Forward(row)
}

func (i *shoutingInterceptor) SessionEnd(error) {}

func TestInterceptor(t *testing.T) {
	ctx := testCtx(t)
	hook := &shoutingInterceptor{}
	var infos []*SessionInfo
	p := startProxy(t, proxyConfig(t, testCluster.Addr()), WithInterceptor(func(si *SessionInfo) Interceptor {
		infos = append(infos, si)
		return hook
	}))
	conn := connect(t, ctx, p.dsn("application_name=hooked", "options=-c%20DateStyle%3DSQL,DMY"))
	var s string
	if err := conn.QueryRow(ctx, "SELECT 'quiet' || $1::text", "ly").Scan(&s); err != nil {
		t.Fatal(err)
	}
	if s != "QUIETLY" || hook.parses.Load() == 0 {
		t.Fatalf("got %q with %d Parse seen", s, hook.parses.Load())
	}
	_, err := conn.Exec(ctx, "SELECT 'forbidden'", pgx.QueryExecModeSimpleProtocol)
	if sqlstate(err) != "42501" {
		t.Fatalf("got %v, want the refusal 42501", err)
	}
	// The session survives a refusal.
	if err := conn.QueryRow(ctx, "SELECT 'still here'", pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil || s != "STILL HERE" {
		t.Fatalf("after the refusal: %q, %v", s, err)
	}
	if len(infos) != 1 || infos[0].User != appUser || infos[0].Database != appDB || infos[0].ApplicationName != "hooked" || infos[0].Config == nil {
		t.Fatalf("session info %+v", infos)
	}
	t.Run("startup parameters are the client's", func(t *testing.T) {
		sp := infos[0].StartupParameters
		if sp["application_name"] != "hooked" || sp["options"] != "-c DateStyle=SQL,DMY" || sp["user"] != appUser {
			t.Fatalf("StartupParameters %v", sp)
		}
	})
	t.Run("server parameters are the upstream's after login", func(t *testing.T) {
		sp := infos[0].ServerParameters
		if sp["DateStyle"] != "SQL, DMY" || sp["client_encoding"] != "UTF8" || sp["standard_conforming_strings"] != "on" ||
			sp["TimeZone"] == "" || sp["server_version"] != conn.PgConn().ParameterStatus("server_version") {
			t.Fatalf("ServerParameters %v", sp)
		}
	})
}

func TestStateTransitions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cur, tx State
		ev      event
		want    State
	}{
		{"login ends in idle", StateStartup, StateStartup, event{kind: evReady, status: 'I'}, StateIdle},
		{"BEGIN opens a transaction", StateIdle, StateIdle, event{kind: evReady, status: 'T'}, StateInTx},
		{"an error fails it", StateInTx, StateInTx, event{kind: evReady, status: 'E'}, StateFailedTx},
		{"an extended error skips to Sync", StateInTx, StateInTx, event{kind: evError, extended: true}, StateSkipTillSync},
		{"a simple error waits for ReadyForQuery", StateIdle, StateIdle, event{kind: evError}, StateIdle},
		{"Sync ends the skipping", StateSkipTillSync, StateInTx, event{kind: evReady, status: 'E'}, StateFailedTx},
		{"COPY FROM STDIN", StateIdle, StateIdle, event{kind: evCopyIn}, StateCopyIn},
		{"COPY TO STDOUT", StateInTx, StateInTx, event{kind: evCopyOut}, StateCopyOut},
		{"COPY ends back in the transaction", StateCopyOut, StateInTx, event{kind: evCopyEnd}, StateInTx},
		{"a COPY error ends the copy", StateCopyIn, StateIdle, event{kind: evError}, StateIdle},
		{"close from anywhere", StateCopyIn, StateIdle, event{kind: evClose}, StateClosed},
		{"closed stays closed", StateClosed, StateIdle, event{kind: evReady, status: 'I'}, StateClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := transition(tc.cur, tc.tx, tc.ev); got != tc.want {
				t.Fatalf("transition(%v, %v, %+v) = %v, want %v", tc.cur, tc.tx, tc.ev, got, tc.want)
			}
		})
	}
	if StateSkipTillSync.String() != "SkipTillSync" || State(42).String() != "State(42)" {
		t.Fatal("State.String")
	}
}

package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// fakeUpstream is just enough of a PostgreSQL server for the relay
// benchmark: trust login, and for every Sync a canned answer shaped like
// pgbench -S -M prepared's (BindComplete, DataRow, CommandComplete,
// ReadyForQuery).
func fakeUpstream(b *testing.B) string {
	var login, answer []byte
	for _, m := range []pgproto3.BackendMessage{
		&pgproto3.AuthenticationOk{}, &pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		login, _ = m.Encode(login)
	}
	for _, m := range []pgproto3.BackendMessage{
		&pgproto3.BindComplete{}, &pgproto3.DataRow{Values: [][]byte{[]byte("-2816")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		answer, _ = m.Encode(answer)
	}
	ln := testenv.AcceptLoop(b, nil, func(c net.Conn) {
		defer c.Close()
		if _, err := readStartupPacket(c); err != nil {
			return
		}
		if _, err := c.Write(login); err != nil {
			return
		}
		in := msgReader{r: bufio.NewReader(c)}
		for {
			typ, _, err := in.next()
			if err != nil {
				return
			}
			if typ == 'S' {
				if _, err := c.Write(answer); err != nil {
					return
				}
			}
		}
	})
	return ln.Addr().String()
}

// BenchmarkRelay measures one pgbench -S -M prepared round trip
// (Bind/Execute/Sync → BindComplete/DataRow/CommandComplete/ReadyForQuery)
// over loopback TCP, direct to the fake server and through the proxy's
// pass-through relay. The difference is the proxy's cost per transaction.
func BenchmarkRelay(b *testing.B) {
	up := fakeUpstream(b)
	var batch []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Bind{PreparedStatement: "P0_1", ParameterFormatCodes: []int16{0}, Parameters: [][]byte{[]byte("12345")}},
		&pgproto3.Execute{}, &pgproto3.Sync{},
	} {
		batch, _ = m.Encode(batch)
	}
	run := func(b *testing.B, addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		sm, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "bench"}}).Encode(nil)
		if _, err := c.Write(sm); err != nil {
			b.Fatal(err)
		}
		in := msgReader{r: bufio.NewReader(c)}
		untilReady := func() {
			for {
				typ, _, err := in.next()
				if err != nil {
					b.Fatal(err)
				}
				if typ == 'Z' {
					return
				}
			}
		}
		untilReady()
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := c.Write(batch); err != nil {
				b.Fatal(err)
			}
			untilReady()
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, up) })
	b.Run("proxy", func(b *testing.B) {
		cfg := proxyConfig(b, up, "auth: {mode: relay}")
		srv, err := New(cfg, WithLogger(slog.New(slog.NewJSONHandler(io.Discard, nil))))
		if err != nil {
			b.Fatal(err)
		}
		run(b, testenv.Serve(b, srv, nil))
	})
}

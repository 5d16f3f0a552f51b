package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// Issue 18, bad input items 1, 2, 3 and 8 on the pass-through path (the
// PHI path: proxy/phi's TestMalformedClientFrames and
// TestMisbehavingUpstream).

// recordingUpstream is a fake server that logs any user in, answers
// each Query with one row of two columns (or, when the query text is
// "short row", with a DataRow of one field), and records the type of
// every message it receives after login.
type recordingUpstream struct {
	addr  string
	mu    sync.Mutex
	types []byte
	dials atomic.Int32
}

func (u *recordingUpstream) got() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return string(u.types)
}

func newRecordingUpstream(t *testing.T) *recordingUpstream {
	u := &recordingUpstream{}
	u.addr = testenv.ScriptedServer(t, func(c net.Conn, be *pgproto3.Backend) {
		u.dials.Add(1)
		for msg := range trustedSession(c, be) {
			var typ byte
			switch m := msg.(type) {
			case *pgproto3.Query:
				typ = 'Q'
				two := binary.BigEndian.AppendUint16(nil, 2)
				for _, n := range []string{"a", "b"} {
					two = append(append(two, n...), 0)
					two = append(two, make([]byte, 18)...) // table, attnum, type, size, typmod, format
				}
				row := dataRowBody("1", "2")
				if m.String == "short row" {
					row = dataRowBody("1")
				}
				_, _ = c.Write(bytes.Join([][]byte{frame('T', two), frame('D', row),
					frame('C', []byte("SELECT 1\x00")), frame('Z', []byte{'I'})}, nil))
			case *pgproto3.Terminate:
				typ = 'X'
			default:
				typ = '?'
			}
			u.mu.Lock()
			u.types = append(u.types, typ)
			u.mu.Unlock()
		}
	})
	return u
}

func dataRowBody(vals ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// fatalThenClose reads until the connection ends and returns the last
// error's SQLSTATE and severity.
func fatalThenClose(t *testing.T, fe *pgproto3.Frontend) (code, severity, msg string) {
	t.Helper()
	for {
		m, err := fe.Receive()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("timed out: the proxy waited instead of answering")
			}
			return
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			code, severity, msg = e.Code, e.Severity, e.Message
		}
	}
}

func TestBadClientFramesNeverReachUpstream(t *testing.T) {
	ctx := testCtx(t)
	up := newRecordingUpstream(t)
	p := startProxy(t, proxyConfig(t, up.addr, "auth: {mode: relay}", "limits: {max_message_bytes: 65536}"))
	hdr := func(typ byte, length uint32) []byte {
		return binary.BigEndian.AppendUint32([]byte{typ}, length)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		code string
	}{
		{"unknown message type", frame('z', []byte("SELECT 1\x00")), "08P01"},
		{"length below 4", hdr('Q', 3), "08P01"},
		{"length 0xFFFFFFFF", hdr('Q', 0xFFFFFFFF), "08P01"},
		{"a length that wraps past 2 GiB", hdr('Q', 0xFFFFFFF8), "08P01"},
		// Announced, never sent: the answer must not wait for the body.
		{"Query over max_message_bytes", hdr('Q', 65536+5), "54000"},
		{"Bind over max_message_bytes", hdr('B', 1<<30), "54000"},
		{"CopyData over max_message_bytes", hdr('d', 0x7FFFFFFF), "54000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.got()
			conn, fe := testenv.Hijack(t, ctx, p.dsn(), 15*time.Second)
			if _, err := conn.Write(append(queryFrame("SELECT 1"), tc.in...)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			code, sev, msg := fatalThenClose(t, fe)
			if code != tc.code || sev != "FATAL" {
				t.Fatalf("got %s %s %q, want FATAL %s", sev, code, msg, tc.code)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("answered after %v", d)
			}
			// The well-formed Query before it was relayed; nothing after.
			waitFor(t, func() bool { return strings.HasPrefix(up.got(), before+"Q") }, "the Query before it relayed")
			if got := strings.TrimPrefix(up.got(), before); strings.Trim(got, "QX") != "" || strings.Count(got, "Q") != 1 {
				t.Fatalf("upstream received %q", got)
			}
		})
	}
	if n := logLines(p.logs.String(), "SELECT 1"); n != 0 {
		t.Fatalf("SQL text reached the log %d times", n)
	}
}

func TestStartupPacketsRefused(t *testing.T) {
	ctx := testCtx(t)
	up := newRecordingUpstream(t)
	p := startProxy(t, proxyConfig(t, up.addr, "auth: {mode: relay}"))
	startup := func(params ...string) []byte {
		b := []byte{0, 0, 0, 0, 0, 3, 0, 0}
		for _, s := range params {
			b = append(append(b, s...), 0)
		}
		b = append(b, 0)
		binary.BigEndian.PutUint32(b, uint32(len(b)))
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		code string
	}{
		{"over 10000 bytes", startup("user", "u", "application_name", strings.Repeat("a", 10000)), "08P01"},
		{"a length below 8", []byte{0, 0, 0, 4}, "08P01"},
		{"a length of 0xFFFFFFFF", []byte{0xFF, 0xFF, 0xFF, 0xFF}, "08P01"},
		{"replication=database", startup("user", "u", "replication", "database"), "0A000"},
		{"replication=true", startup("user", "u", "replication", "true"), "0A000"},
		{"no user", startup("database", "d"), "28000"},
		{"a parameter without its value", []byte{0, 0, 0, 13, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0}, "08P01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(tc.in); err != nil {
				t.Fatal(err)
			}
			code, sev, msg := fatalThenClose(t, pgproto3.NewFrontend(c, c))
			if code != tc.code || sev != "FATAL" {
				t.Fatalf("got %s %s %q, want FATAL %s", sev, code, msg, tc.code)
			}
		})
	}
	if n := up.dials.Load(); n != 0 {
		t.Fatalf("the upstream was dialled %d times", n)
	}
	_ = ctx
}

// Bytes sent after an SSLRequest before the TLS handshake (CVE-2021-23214,
// PgBouncer's CVE-2021-3935) are never read as if they came through TLS:
// the handshake fails on them and the connection ends before any login.
func TestBytesPipelinedAfterSSLRequest(t *testing.T) {
	up := newRecordingUpstream(t)
	cert, key, err := testCluster.CA.Issue("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, proxyConfig(t, up.addr, "auth: {mode: relay}", "client_tls: {mode: allow, cert: "+cert+", key: "+key+"}"))
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	smuggled := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	smuggled = append(smuggled, "user\x00"+testenv.AppUser+"\x00database\x00"+testenv.AppDB+"\x00\x00"...)
	binary.BigEndian.PutUint32(smuggled, uint32(len(smuggled)))
	smuggled = append(smuggled, queryFrame("SELECT 'smuggled'")...)
	if _, err := c.Write(append(ssl, smuggled...)); err != nil {
		t.Fatal(err)
	}
	var s [1]byte
	if _, err := io.ReadFull(c, s[:]); err != nil || s[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", s[:], err)
	}
	rest, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the proxy kept the connection open")
	}
	// At most a TLS alert record (content type 21), never a protocol
	// message such as an authentication request ('R').
	if len(rest) > 0 && rest[0] != 21 {
		t.Fatalf("after the smuggled bytes the proxy sent %q", rest)
	}
	if n := up.dials.Load(); n != 0 {
		t.Fatalf("the smuggled startup reached the upstream (%d logins)", n)
	}
	if strings.Contains(p.logs.String(), "session started") {
		t.Fatal("a session started")
	}
}

// A DataRow whose field count is not its RowDescription's ends the
// session with 08P01 instead of reaching the client as a short row.
func TestUpstreamRowShapeChecked(t *testing.T) {
	ctx := testCtx(t)
	up := newRecordingUpstream(t)
	p := startProxy(t, proxyConfig(t, up.addr, "auth: {mode: relay}"))
	conn := pgConnect(t, ctx, p.dsn())
	if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatalf("a well-formed answer: %v", err)
	}
	_, err := conn.Exec(ctx, "short row").ReadAll()
	if code := sqlstate(err); code != "08P01" || !strings.Contains(err.Error(), "DataRow") {
		t.Fatalf("got %v, want 08P01 naming the DataRow", err)
	}
}

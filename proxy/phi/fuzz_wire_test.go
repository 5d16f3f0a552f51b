package phi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/internal/testenv"
)

// Fuzz targets for the message paths of a PHI session (issue 18): the
// client's messages after startup, and the upstream's answers. Both run
// the proxy that ships (proxy.Server with the phi Interceptor) against
// the package's PostgreSQL cluster.

// fuzzRole may read and write the PHI tables but owns nothing: the
// client fuzzer cannot drop or truncate what other tests use.
const (
	fuzzRole     = "phi_fuzz"
	fuzzPassword = "phi-fuzz-pw"
)

func fuzzDSN(p *testProxy) string {
	return "postgres://" + fuzzRole + ":" + fuzzPassword + "@" + p.addr + "/" + appDB + "?sslmode=disable"
}

// wireSeeds are client message streams in both protocols on PHI tables.
func wireSeeds() [][]byte {
	q := func(s string) []byte { return rawFrame('Q', []byte(s+"\x00")) }
	parse := func(name, s string, oids ...uint32) []byte {
		b := []byte(name + "\x00" + s + "\x00")
		b = binary.BigEndian.AppendUint16(b, uint16(len(oids)))
		for _, o := range oids {
			b = binary.BigEndian.AppendUint32(b, o)
		}
		return rawFrame('P', b)
	}
	bind := func(stmt string, formats []int16, params ...[]byte) []byte {
		return rawFrame('B', bindBody(stmt, formats, params))
	}
	describe := func(kind byte, name string) []byte { return rawFrame('D', append([]byte{kind}, name+"\x00"...)) }
	execute := rawFrame('E', []byte("\x00\x00\x00\x00\x00"))
	sync := rawFrame('S', nil)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		q("SELECT id, ssn, diagnosis FROM patients WHERE ssn = '123-45-6789'"),
		q("INSERT INTO patients (id, ssn, dob) VALUES (900, 'fz-1', '1980-01-02'); SELECT ssn FROM patients WHERE id = 900"),
		q("BEGIN; UPDATE patients SET diagnosis = 'x' WHERE ssn IN ('a', 'b'); ROLLBACK"),
		q("SET search_path = pg_temp, public; SELECT ssn FROM patients"),
		q("COPY patients (id, ssn) FROM STDIN"),
		join(q("COPY patients (id, ssn) FROM STDIN"), rawFrame('d', []byte("901\tfz-2\n")), rawFrame('c', nil)),
		q("COPY (SELECT id, ssn FROM patients) TO STDOUT (FORMAT binary)"),
		join(parse("", "SELECT id, ssn FROM patients WHERE ssn = $1"), bind("", nil, []byte("123-45-6789")), describe('P', ""), execute, sync),
		join(parse("s1", "INSERT INTO patients (id, ssn, mrn) VALUES ($1, $2, $3)", 23, 0, 20),
			bind("s1", []int16{1, 0, 1}, []byte{0, 0, 3, 0x86}, []byte("fz-3"), []byte{0, 0, 0, 0, 0, 0, 0, 7}), execute, sync),
		join(parse("", "SELECT ssn FROM patients WHERE mrn = $1"), describe('S', ""), bind("", []int16{1}, []byte{1, 2, 3}), execute, sync),
		join(parse("", "SELECT ssn FROM patients"), bind("", nil), rawFrame('E', []byte("\x00\x00\x00\x00\x01")), execute, sync),
		join(parse("", "SELECT 1"), rawFrame('C', []byte("S\x00")), rawFrame('H', nil), sync),
		join(rawFrame('F', []byte{0, 0, 0x04, 0x08, 0, 0, 0, 1, 0, 0, 0, 1, '1', 0, 0}), sync),
	}
}

func fuzzSetup(f *testing.F) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	super, err := pgx.Connect(ctx, testCluster.DSN(testCluster.SuperUser, testCluster.SuperPassword, appDB, "sslmode=disable"))
	if err != nil {
		f.Fatal(err)
	}
	defer super.Close(ctx)
	for _, q := range []string{
		`DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '` + fuzzRole + `') THEN CREATE ROLE ` + fuzzRole + ` LOGIN PASSWORD '` + fuzzPassword + `'; END IF; END$$`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON patients, visits, restricted, types TO ` + fuzzRole,
	} {
		if _, err := super.Exec(ctx, q); err != nil {
			f.Fatal(err)
		}
	}
}

// readToEnd reads what the proxy sends until it closes the connection;
// it fails t if the proxy keeps it open past the deadline.
func readToEnd(t *testing.T, c net.Conn, each func(pgproto3.BackendMessage)) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	for {
		m, err := fe.Receive()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the proxy kept the connection open")
			}
			return
		}
		if each != nil {
			each(m)
		}
	}
}

// FuzzClientMessages writes arbitrary bytes as the client of a PHI
// session after a real login. Properties: the proxy never panics (a
// recovered panic logs "phiproxy bug"), never logs a value of the seeds,
// and keeps serving (every input logs in afresh).
func FuzzClientMessages(f *testing.F) {
	for _, s := range wireSeeds() {
		f.Add(s)
	}
	fuzzSetup(f)
	ctx := context.Background()
	p := serveProxy(f, ctx, testCfg)
	f.Fuzz(func(t *testing.T, in []byte) {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, fe := testenv.Hijack(t, cctx, fuzzDSN(p), 10*time.Second)
		// The input, then a Sync and a marker query: the session answers
		// the marker unless the input ended it or left it waiting (COPY
		// FROM STDIN, an unterminated message), which a pause tells.
		_, _ = conn.Write(append(append(append([]byte{}, in...), rawFrame('S', nil)...), rawFrame('Q', []byte("SELECT 'fuzz-end'\x00"))...))
		// (Each input must finish well within the fuzzer's 10 s hang
		// limit.)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			m, err := fe.Receive()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// A pause: the session waits for more (an incomplete
				// message, COPY FROM STDIN). The client goes away; the
				// proxy must then end the session promptly.
				_ = conn.(*net.TCPConn).CloseWrite()
				_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				if _, err := io.Copy(io.Discard, conn); errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("the proxy kept the session open after the client closed its side")
				}
				break
			}
			if err != nil {
				break // the proxy ended the session
			}
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			if d, ok := m.(*pgproto3.DataRow); ok && len(d.Values) == 1 && string(d.Values[0]) == "fuzz-end" {
				break
			}
		}
		if logs := p.logs.String(); strings.Contains(logs, "phiproxy bug") || strings.Contains(logs, "123-45-6789") || strings.Contains(logs, "fz-") {
			t.Fatalf("log:\n%s", logs)
		}
	})
}

// FuzzServerMessages lets a fake upstream answer a PHI statement with
// arbitrary bytes (the seeds: well-formed answers, some carrying a real
// ciphertext in a planned and in an unplanned column). Properties: the
// client's connection ends or completes (no hang), the proxy never
// panics, and no envelope ever reaches the client in a row.
func FuzzServerMessages(f *testing.F) {
	ctx := context.Background()
	seedProxy := startProxy(f)
	direct, err := pgx.Connect(ctx, directDSN())
	if err != nil {
		f.Fatal(err)
	}
	defer direct.Close(ctx)
	via, err := pgx.Connect(ctx, seedProxy.dsn())
	if err != nil {
		f.Fatal(err)
	}
	if _, err := via.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES (1, '123-45-6789')"); err != nil {
		f.Fatal(err)
	}
	via.Close(ctx)
	var env []byte
	if err := direct.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 1").Scan(&env); err != nil {
		f.Fatal(err)
	}
	hexEnv := []byte(`\x` + strings.ToLower(strings.TrimPrefix(fmtHex(env), "")))
	rowDesc := func(names ...string) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(len(names)))
		for _, n := range names {
			b = append(append(b, n...), 0)
			b = binary.BigEndian.AppendUint32(b, 0)      // table OID
			b = binary.BigEndian.AppendUint16(b, 0)      // attnum
			b = binary.BigEndian.AppendUint32(b, 17)     // bytea
			b = binary.BigEndian.AppendUint16(b, 0xFFFF) // size -1
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
			b = binary.BigEndian.AppendUint16(b, 0)
		}
		return rawFrame('T', b)
	}
	row := func(vals ...[]byte) []byte { return rawFrame('D', dataRow(vals...)) }
	done := bytes.Join([][]byte{rawFrame('C', []byte("SELECT 1\x00")), rawFrame('Z', []byte{'I'})}, nil)
	for _, s := range [][]byte{
		bytes.Join([][]byte{rowDesc("id", "ssn"), row([]byte("1"), hexEnv), done}, nil),
		bytes.Join([][]byte{rowDesc("id", "ssn"), row(hexEnv, hexEnv), done}, nil),
		bytes.Join([][]byte{rowDesc("id", "ssn"), row([]byte("1")), done}, nil),
		bytes.Join([][]byte{rawFrame('E', []byte("SERROR\x00C23505\x00MKey (ssn)=("+string(hexEnv)+") already exists.\x00\x00")), rawFrame('Z', []byte{'I'})}, nil),
		bytes.Join([][]byte{rawFrame('N', []byte("SNOTICE\x00C00000\x00M"+string(hexEnv)+"\x00\x00")), rawFrame('A', append([]byte{0, 0, 0, 1, 'c', 0}, append(hexEnv, 0, 0)...)), done}, nil),
		bytes.Join([][]byte{rawFrame('S', []byte("standard_conforming_strings\x00off\x00")), done}, nil),
		bytes.Join([][]byte{rawFrame('H', []byte{0, 0, 0}), rawFrame('d', hexEnv), rawFrame('c', nil), done}, nil),
		{'D', 0, 0, 0, 3},
		{'Z', 0xFF, 0xFF, 0xFF, 0xFF},
		bytes.Join([][]byte{rowDesc("id", "ssn"), row([]byte("1"), hexEnv)[:20]}, nil),
	} {
		f.Add(s)
	}
	rec := testKeys(f).Recognizer()
	answer := &fakeAnswer{}
	up := fakeUpstream(f, answer)
	cfg := *testCfg
	cfg.Upstream.Address = up
	cfg.Limits.MaxMessageBytes = 1 << 20
	p := serveProxy(f, ctx, &cfg)
	f.Fuzz(func(t *testing.T, in []byte) {
		answer.set(in)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, _ := testenv.Hijack(t, cctx, p.dsn(), 10*time.Second)
		if _, err := conn.Write(rawFrame('Q', []byte("SELECT id, ssn FROM patients WHERE ssn = '123-45-6789'\x00"))); err != nil {
			t.Fatal(err)
		}
		readToEnd(t, conn, func(m pgproto3.BackendMessage) {
			switch m := m.(type) {
			case *pgproto3.DataRow:
				for _, v := range m.Values {
					if rec.Contains(v) {
						t.Fatalf("an envelope reached the client: %q", v)
					}
				}
			case *pgproto3.ErrorResponse:
				if rec.Contains([]byte(m.Message + m.Detail)) {
					t.Fatalf("an envelope reached the client in an error: %q", m.Message)
				}
			case *pgproto3.NotificationResponse:
				if rec.Contains([]byte(m.Payload)) {
					t.Fatalf("an envelope reached the client in a notification")
				}
			}
		})
		if logs := p.logs.String(); strings.Contains(logs, "phiproxy bug") || strings.Contains(logs, "123-45-6789") {
			t.Fatalf("log:\n%s", logs)
		}
	})
}

func fmtHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// fakeAnswer holds what the fake upstream answers with.
type fakeAnswer struct {
	mu sync.Mutex
	b  []byte
}

func (a *fakeAnswer) set(b []byte) {
	a.mu.Lock()
	a.b = append([]byte(nil), b...)
	a.mu.Unlock()
}

func (a *fakeAnswer) get() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.b
}

// fakeUpstream logs any user in, then answers the first message after
// login with answer's bytes and closes the connection.
func fakeUpstream(t testing.TB, answer *fakeAnswer) string {
	return testenv.ScriptedServer(t, func(c net.Conn, be *pgproto3.Backend) {
		var out []byte
		out = append(out, rawFrame('R', []byte{0, 0, 0, 0})...)
		out = append(out, rawFrame('S', []byte("standard_conforming_strings\x00on\x00"))...)
		out = append(out, rawFrame('S', []byte("client_encoding\x00UTF8\x00"))...)
		out = append(out, rawFrame('S', []byte("DateStyle\x00ISO, MDY\x00"))...)
		out = append(out, rawFrame('S', []byte("TimeZone\x00UTC\x00"))...)
		out = append(out, rawFrame('S', []byte("integer_datetimes\x00on\x00"))...)
		out = append(out, rawFrame('S', []byte("IntervalStyle\x00postgres\x00"))...)
		out = append(out, rawFrame('K', []byte{0, 0, 0, 7, 1, 2, 3, 4})...)
		out = append(out, rawFrame('Z', []byte{'I'})...)
		if _, err := c.Write(out); err != nil {
			return
		}
		if _, err := be.Receive(); err != nil {
			return
		}
		_, _ = c.Write(answer.get())
	})
}

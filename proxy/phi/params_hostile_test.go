package phi

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Issue 18, item 7: untyped (OID 0), binary and oddly typed Bind
// parameters bound to PHI columns are encrypted correctly or refused,
// never forwarded raw.
func TestOddlyTypedPHIParameters(t *testing.T) {
	ctx := testCtx(t)
	p := startProxy(t)
	direct := connect(t, ctx, directDSN(), pgx.QueryExecModeSimpleProtocol)
	const (
		oidText = 25
		oidInt4 = 23
		oidInt8 = 20
	)
	int8be := func(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }
	int4be := func(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
	cases := []struct {
		name    string
		oids    []uint32
		formats []int16
		params  [][]byte
		// want: the stored ssn/mrn read back through the proxy, or ""
		// when the statement must be refused.
		wantSSN string
		wantMRN string
	}{
		{"untyped text", []uint32{0, 0, 0}, nil, [][]byte{[]byte("8001"), []byte("odd-1"), []byte("42")}, "odd-1", "42"},
		{"declared text, text format", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8002"), []byte("odd-2"), []byte("43")}, "odd-2", "43"},
		{"binary int8 for the int8 PHI column", []uint32{oidInt4, oidText, oidInt8}, []int16{1, 0, 1}, [][]byte{int4be(8003), []byte("odd-3"), int8be(44)}, "odd-3", "44"},
		{"untyped binary int8", []uint32{oidInt4, 0, 0}, []int16{1, 0, 1}, [][]byte{int4be(8004), []byte("odd-4"), int8be(45)}, "odd-4", "45"},
		{"binary int4 bytes for the int8 PHI column", []uint32{oidInt4, oidText, oidInt4}, []int16{1, 0, 1}, [][]byte{int4be(8005), []byte("odd-5"), int4be(46)}, "odd-5", "46"},
		{"binary of the wrong width", []uint32{oidInt4, oidText, oidInt8}, []int16{1, 0, 1}, [][]byte{int4be(8006), []byte("odd-6"), {0, 1, 2}}, "", ""},
		{"text that is no integer for the int8 PHI column", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8007"), []byte("odd-7"), []byte("forty")}, "", ""},
		{"a NUL byte in a text PHI value", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8008"), []byte("odd\x008"), []byte("48")}, "", ""},
		{"invalid UTF-8 in a text PHI value", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8009"), []byte("odd-\xff9"), []byte("49")}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, fe := rawSession(t, ctx, p)
			var parse []byte
			parse = append(parse, "\x00INSERT INTO patients (id, ssn, mrn) VALUES ($1, $2, $3)\x00"...)
			parse = binary.BigEndian.AppendUint16(parse, uint16(len(c.oids)))
			for _, o := range c.oids {
				parse = binary.BigEndian.AppendUint32(parse, o)
			}
			msgs := append(rawFrame('P', parse), rawFrame('B', bindBody("", c.formats, c.params))...)
			msgs = append(msgs, rawFrame('E', []byte("\x00\x00\x00\x00\x00"))...)
			msgs = append(msgs, rawFrame('S', nil)...)
			if _, err := conn.Write(msgs); err != nil {
				t.Fatal(err)
			}
			a := readAnswer(t, fe)
			id := string(c.params[0])
			if c.formats != nil && c.formats[0] == 1 {
				id = strconv.Itoa(int(binary.BigEndian.Uint32(c.params[0])))
			}
			var stored []byte
			err := direct.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = "+id).Scan(&stored)
			if c.wantSSN == "" {
				if len(a.codes) == 0 {
					t.Fatalf("accepted (stored %q)", stored)
				}
				if err == nil {
					t.Fatalf("refused with %v but a row was stored", a.codes)
				}
				return
			}
			if len(a.codes) != 0 || err != nil {
				t.Fatalf("got errors %v, read %v", a.codes, err)
			}
			if !strings.HasPrefix(string(stored), "PH\x01") {
				t.Fatalf("ssn stored without the envelope: %q", stored)
			}
			via := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
			var ssn string
			var mrn int64
			if err := via.QueryRow(ctx, "SELECT ssn, mrn FROM patients WHERE id = "+id).Scan(&ssn, &mrn); err != nil {
				t.Fatal(err)
			}
			if ssn != c.wantSSN || strconv.Itoa(int(mrn)) != c.wantMRN {
				t.Fatalf("read back ssn %q mrn %d, want %q %s", ssn, mrn, c.wantSSN, c.wantMRN)
			}
		})
	}
	if logs := p.logs.String(); strings.Contains(logs, "odd-") {
		t.Fatal("a value reached the log")
	}
}

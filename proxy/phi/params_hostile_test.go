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
	// Every ssn is a canary: sent in the clear it would be in the
	// server log (log_statement = all prints parameters).
	ssn := func(i int) []byte { return []byte(canary(t, "odd"+strconv.Itoa(i))) }
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
		{"untyped text", []uint32{0, 0, 0}, nil, [][]byte{[]byte("8001"), ssn(1), []byte("42")}, string(ssn(1)), "42"},
		{"declared text, text format", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8002"), ssn(2), []byte("43")}, string(ssn(2)), "43"},
		{"binary int8 for the int8 PHI column", []uint32{oidInt4, oidText, oidInt8}, []int16{1, 0, 1}, [][]byte{int4be(8003), ssn(3), int8be(44)}, string(ssn(3)), "44"},
		{"untyped binary int8", []uint32{oidInt4, 0, 0}, []int16{1, 0, 1}, [][]byte{int4be(8004), ssn(4), int8be(45)}, string(ssn(4)), "45"},
		{"binary int4 bytes for the int8 PHI column", []uint32{oidInt4, oidText, oidInt4}, []int16{1, 0, 1}, [][]byte{int4be(8005), ssn(5), int4be(46)}, string(ssn(5)), "46"},
		{"binary of the wrong width", []uint32{oidInt4, oidText, oidInt8}, []int16{1, 0, 1}, [][]byte{int4be(8006), ssn(6), {0, 1, 2}}, "", ""},
		{"text that is no integer for the int8 PHI column", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8007"), ssn(7), []byte("forty")}, "", ""},
		{"a NUL byte in a text PHI value", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8008"), append(ssn(8), "\x00x"...), []byte("48")}, "", ""},
		{"invalid UTF-8 in a text PHI value", []uint32{oidInt4, oidText, oidInt8}, nil, [][]byte{[]byte("8009"), append(ssn(9), 0xff), []byte("49")}, "", ""},
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
				// Refused by the proxy: the INSERT never reached the
				// server (which logs each Bind's parameters).
				assertNotLogged(t, "$1 = '"+id+"'")
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
	for i := 1; i <= len(cases); i++ {
		assertNotLogged(t, string(ssn(i)))
		if strings.Contains(p.logs.String(), string(ssn(i))) {
			t.Fatal("a value reached the proxy's log")
		}
	}
}

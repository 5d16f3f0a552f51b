package phi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/phiproxy/phiproxy/pgerr"
)

// typeNames are the columns of types and types_plain, id first.
func typeNames() []string {
	names := []string{"id"}
	for _, c := range typeCols {
		names = append(names, c.name)
	}
	return names
}

// binaryRows are rows for types in the order of typeCols, with NULLs,
// infinities and a 1 MiB text.
func binaryRows(t *testing.T, lo int) [][]any {
	t.Helper()
	num := func(s string) pgtype.Numeric {
		var n pgtype.Numeric
		if err := n.Scan(s); err != nil {
			t.Fatal(err)
		}
		return n
	}
	uuid := pgtype.UUID{Bytes: [16]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}, Valid: true}
	plus2 := time.FixedZone("", 2*3600)
	big := strings.Repeat("abcé\t\\\n", 1<<20/8)
	rows := [][]any{
		{lo, "a,b", "v", time.Date(1980, 1, 2, 0, 0, 0, 0, time.UTC), time.Date(2020, 1, 2, 3, 4, 5, 500000000, time.UTC),
			time.Date(2020, 1, 2, 3, 4, 5, 0, plus2), int32(7), int64(-9), num("1.5"), true, uuid, []byte(`{"b": 1, "a": [1e3, "x"]}`)},
		{lo + 1, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil},
		{lo + 2, "é", "", pgtype.Date{InfinityModifier: pgtype.Infinity, Valid: true}, pgtype.Timestamp{InfinityModifier: pgtype.NegativeInfinity, Valid: true},
			time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), int32(2147483647), int64(0), num("1000"), false, uuid, []byte(`null`)},
		{lo + 3, big, big[:1000], time.Date(-43, 3, 15, 0, 0, 0, 0, time.UTC), time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC),
			time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC), int32(-2147483648), int64(9223372036854775807), num("-0.000001"), true, nil, []byte(`[1, 2.5, "x"]`)},
	}
	return rows
}

// binaryOut is COPY TO STDOUT (FORMAT binary) of types (through conn) or
// types_plain, ids in [lo, hi].
func binaryOut(t *testing.T, ctx context.Context, conn *pgconn.PgConn, table string, lo, hi int, expr string) []byte {
	t.Helper()
	if expr == "" {
		expr = "id"
	}
	names := typeNames()
	names[0] = expr
	q := fmt.Sprintf("COPY (SELECT %s FROM %s WHERE id BETWEEN %d AND %d ORDER BY id) TO STDOUT (FORMAT binary)", strings.Join(names, ", "), table, lo, hi)
	var buf bytes.Buffer
	if _, err := conn.CopyTo(ctx, &buf, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return buf.Bytes()
}

// typesCiphertext checks that every non-NULL PHI value of types in the id
// range is an envelope, looking directly at the table.
func typesCiphertext(t *testing.T, ctx context.Context, direct *pgx.Conn, lo, hi int) {
	t.Helper()
	var cols []string
	for _, c := range typeCols {
		cols = append(cols, c.name)
	}
	envelopesOnly(t, ctx, direct, "types", cols, lo, hi)
}

// TestCopyBinaryPgx loads every logical type with pgx's CopyFrom (binary
// COPY, values encoded with the types the proxy reports) through the
// proxy and directly into the plaintext twin, and compares what comes
// back: rows read through the proxy and binary COPY output byte for byte.
func TestCopyBinaryPgx(t *testing.T) {
	const lo, hi = 8301, 8399
	ctx, _, via, direct := startCopyOn(t, "types", pgx.QueryExecModeCacheStatement, lo, hi)

	// pgx describes "select <columns> from types" first: through the proxy
	// the PHI columns are reported with their logical types, which is what
	// pgx then encodes the values as.
	sd, err := via.Prepare(ctx, "", "select "+strings.Join(typeNames(), ", ")+" from types")
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range typeCols {
		if got, want := sd.Fields[i+1].DataTypeOID, pgtypeOID(t, direct, c.sqlType); got != want {
			t.Fatalf("column %s described as OID %d through the proxy, want %d (%s)", c.name, got, want, c.sqlType)
		}
	}

	rows := binaryRows(t, lo)
	for _, x := range []struct {
		conn  *pgx.Conn
		table string
	}{{via, "types"}, {direct, "types_plain"}} {
		n, err := x.conn.CopyFrom(ctx, pgx.Identifier{x.table}, typeNames(), pgx.CopyFromRows(rows))
		if err != nil || n != int64(len(rows)) {
			t.Fatalf("CopyFrom %s: %d rows, %v", x.table, n, err)
		}
	}
	typesCiphertext(t, ctx, direct, lo, hi)

	for _, tz := range []string{"UTC", "America/New_York"} {
		for _, c := range []*pgx.Conn{via, direct} {
			mustExec(t, ctx, c, "SET TimeZone = '"+tz+"'")
		}
		got := binaryOut(t, ctx, via.PgConn(), "types", lo, hi, "")
		want := binaryOut(t, ctx, direct.PgConn(), "types_plain", lo, hi, "")
		if !bytes.Equal(got, want) {
			t.Fatalf("TimeZone %s: binary COPY TO through the proxy differs from the plaintext twin's (%d and %d bytes)", tz, len(got), len(want))
		}
		if len(got) < 1<<20 || bytes.Contains(got, []byte("PH\x01")) {
			t.Fatalf("binary COPY TO: %d bytes, ciphertext %v", len(got), bytes.Contains(got, []byte("PH\x01")))
		}
		// Read back through the proxy with the extended protocol.
		q := "SELECT " + strings.Join(typeNames(), ", ") + " FROM %s WHERE id BETWEEN $1 AND $2 ORDER BY id"
		a, b := queryValues(t, ctx, via, fmt.Sprintf(q, "types"), lo, hi), queryValues(t, ctx, direct, fmt.Sprintf(q, "types_plain"), lo, hi)
		if len(a) != len(rows) || !reflect.DeepEqual(a, b) {
			t.Fatalf("TimeZone %s: rows read through the proxy differ from the plaintext twin's:\n got %.300v\nwant %.300v", tz, a, b)
		}
	}
	// Text output agrees too.
	list := strings.Join(typeNames(), ", ")
	qt := func(table string) string {
		return fmt.Sprintf("COPY (SELECT %s FROM %s WHERE id BETWEEN %d AND %d ORDER BY id) TO STDOUT (FORMAT csv)", list, table, lo, hi)
	}
	if got, want := copyTo(t, ctx, via.PgConn(), qt("types")), copyTo(t, ctx, direct.PgConn(), qt("types_plain")); got != want {
		t.Fatal("csv COPY TO after a binary COPY FROM differs from the plaintext twin's")
	}
}

func pgtypeOID(t *testing.T, direct *pgx.Conn, typ string) uint32 {
	t.Helper()
	var oid uint32
	if err := direct.QueryRow(context.Background(), "SELECT $1::regtype::oid", typ).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

func queryValues(t *testing.T, ctx context.Context, c *pgx.Conn, sql string, args ...any) [][]any {
	t.Helper()
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCopyBinaryStream sends raw binary COPY streams cut into CopyData
// pieces of 1 to 7 bytes, and broken streams.
func TestCopyBinaryStream(t *testing.T) {
	const lo, hi = 8401, 8699
	ctx, p, via, direct := startCopyOn(t, "types", pgx.QueryExecModeSimpleProtocol, lo, hi)
	rows := binaryRows(t, lo)[:3] // the 1 MiB row would take 250,000 CopyData messages
	if _, err := direct.CopyFrom(ctx, pgx.Identifier{"types_plain"}, typeNames(), pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	list := strings.Join(typeNames(), ", ")
	// The plaintext twin's binary output, renumbered, is the client's
	// stream; a header extension is added to the second one.
	for k, shift := range []int{100, 150} {
		stream := binaryOut(t, ctx, direct.PgConn(), "types_plain", lo, lo+99, fmt.Sprintf("id + %d", shift))
		if k == 1 {
			ext := append([]byte(copySignature), 0, 0, 0, 0, 0, 0, 0, 5, 'e', 'x', 't', '!', '?')
			stream = append(ext, stream[binHeaderLen:]...)
		}
		for _, x := range []struct {
			conn  *pgconn.PgConn
			table string
		}{{via.PgConn(), "types"}, {direct.PgConn(), "types_plain"}} {
			sql := "COPY " + x.table + " (" + list + ") FROM STDIN (FORMAT binary)"
			tag, err := x.conn.CopyFrom(ctx, chunked(string(stream), uint64(shift)), sql)
			if err != nil || tag.RowsAffected() != int64(len(rows)) {
				t.Fatalf("%s: %v %v", sql, tag, err)
			}
		}
		l := lo + shift
		typesCiphertext(t, ctx, direct, l, l+49)
		if got, want := binaryOut(t, ctx, via.PgConn(), "types", l, l+49, ""), binaryOut(t, ctx, direct.PgConn(), "types_plain", l, l+49, ""); !bytes.Equal(got, want) {
			t.Fatalf("binary COPY TO of rows loaded in 1-7 byte pieces differs:\n got %q\nwant %q", got, want)
		}
	}

	// Broken streams: the right SQLSTATE, nothing inserted, the session
	// usable, no value in the error or the log.
	const canary = "canary-binary-7a1f"
	one := func(id int32, text string, int4 []byte) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(len(typeCols)+1))
		b = appendField(b, binary.BigEndian.AppendUint32(nil, uint32(id)))
		for _, c := range typeCols {
			switch c.name {
			case "t_text":
				b = appendField(b, []byte(text))
			case "t_int4":
				b = appendField(b, int4)
			default:
				b = appendField(b, nil)
			}
		}
		return b
	}
	header := append([]byte(copySignature), 0, 0, 0, 0, 0, 0, 0, 0)
	good := append(append([]byte{}, header...), one(8601, canary, []byte{0, 0, 0, 1})...)
	trailer := []byte{0xff, 0xff}
	count := func() int {
		var n int
		if err := direct.QueryRow(ctx, "SELECT count(*) FROM types WHERE id BETWEEN 8600 AND 8699").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, c := range []struct {
		name   string
		data   []byte
		code   string
		column string
	}{
		{"an int4 of three bytes", cat(good, one(8602, "x", []byte{0, 0, 1}), trailer), "22P03", "public.types.t_int4"},
		{"text that is not UTF-8", cat(good, one(8603, "\xff\xfe", []byte{0, 0, 0, 1}), trailer), "22021", "public.types.t_text"},
		{"a stream cut inside a tuple", good[:len(good)-3], "22P04", ""},
		{"a stream cut inside the header", header[:15], "22P04", ""},
		{"no header at all", []byte("8604\tx\n"), "22P04", ""},
		{"a wrong field count", cat(good, []byte{0, 2, 0, 0, 0, 0, 0, 0, 0, 0}, trailer), "22P04", ""},
		{"a negative field size", cat(good, []byte{0, byte(len(typeCols) + 1), 0xff, 0xff, 0xff, 0xfe}, trailer), "22P04", ""},
		{"data after the trailer", cat(good, trailer, []byte{0}), "22P04", ""},
		{"WITH OIDS", cat(append([]byte(copySignature), 0, 1, 0, 0, 0, 0, 0, 0), good[len(header):], trailer), "22P04", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := via.PgConn().CopyFrom(ctx, chunked(string(c.data), 3), "COPY types ("+list+") FROM STDIN (FORMAT binary)")
			expectCode(t, err, c.code, c.name)
			if c.column != "" && !strings.Contains(err.Error(), c.column) {
				t.Fatalf("the error must name the column: %v", err)
			}
			if strings.Contains(err.Error(), canary) {
				t.Fatalf("the error holds a value: %v", err)
			}
			if n := count(); n != 0 {
				t.Fatalf("%d rows of the failed COPY were inserted", n)
			}
			stillWorks(t, ctx, via)
		})
	}
	// A stream may end at a tuple boundary without the trailer, as
	// PostgreSQL accepts.
	if tag, err := via.PgConn().CopyFrom(ctx, chunked(string(good), 4), "COPY types ("+list+") FROM STDIN (FORMAT binary)"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("a stream without its trailer: %v %v", tag, err)
	}
	if strings.Contains(p.logs.String(), canary) {
		t.Fatal("a value reached the log")
	}
}

// binaryStream builds a binary COPY stream of three-field tuples; a nil
// field is NULL.
func binaryStream(tuples ...[3][]byte) []byte {
	b := append([]byte(copySignature), 0, 0, 0, 0, 0, 0, 0, 0)
	for _, tu := range tuples {
		b = binary.BigEndian.AppendUint16(b, 3)
		for _, f := range tu {
			b = appendField(b, f)
		}
	}
	return binary.BigEndian.AppendUint16(b, 0xffff)
}

// appendField appends a binary COPY field: its length and bytes, or -1
// for NULL (nil).
func appendField(b, f []byte) []byte {
	if f == nil {
		return binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
	return append(b, f...)
}

var binaryFormat = copyFormat{binary: true}

func TestCopyBinaryRoundTrip(t *testing.T) {
	keys := testKeys(t)
	src := binaryStream([3][]byte{[]byte("a"), []byte("v"), []byte("b")}, [3][]byte{nil, nil, nil},
		[3][]byte{{}, {}, {}}, [3][]byte{[]byte("\x00\xff"), []byte(strings.Repeat("é\n", 5000)), []byte("x")})
	for _, step := range []int{1, 2, 3, 7, 100, 1 << 20} {
		var chunks [][]byte
		for b := src; len(b) > 0; b = b[min(step, len(b)):] {
			chunks = append(chunks, b[:min(step, len(b))])
		}
		enc, err := feedAll(testStream(t, keys, binaryFormat, true, "a", "v*", "b"), append(chunks, nil)...)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if bytes.Count(enc, []byte("PH\x01")) != 3 || bytes.Contains(enc, []byte("é\n")) {
			t.Fatalf("step %d: not every PHI value was encrypted: %q", step, enc[:min(len(enc), 200)])
		}
		dec, err := feedAll(testStream(t, keys, binaryFormat, false, "a", "v*", "b"), enc)
		if err != nil || !bytes.Equal(dec, src) {
			t.Fatalf("step %d: round trip: %v\n got %q\nwant %q", step, err, dec, src)
		}
	}
}

// FuzzCopyBinary checks the binary COPY stream in both directions: the
// result does not depend on where the stream is cut into CopyData
// messages, and a stream that encrypts decrypts back to itself byte for
// byte (binary text is its own canonical form) and encrypts again to
// the same bytes (deterministic key).
func FuzzCopyBinary(f *testing.F) {
	for _, s := range [][]byte{
		binaryStream([3][]byte{[]byte("1"), []byte("abc"), []byte("x")}, [3][]byte{nil, nil, nil}),
		binaryStream([3][]byte{{}, []byte("PH\x01"), []byte("\\x504801")}),
		binaryStream()[:binHeaderLen+1],
		append(binaryStream([3][]byte{nil, []byte("v"), nil}), 0),
		[]byte("PGCOPY\n\377\r\n\000\000\001\000\000\000\000\000\000"),
		[]byte("1\tx\n"),
	} {
		f.Add(s, uint16(len(s)/2))
	}
	keys := testKeys(f)
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		k := int(cut) % (len(data) + 1)
		for _, in := range []bool{true, false} {
			one, err1 := feedAll(testStream(t, keys, binaryFormat, in, "a", "v*", "b"), data)
			two, err2 := feedAll(testStream(t, keys, binaryFormat, in, "a", "v*", "b"), data[:k], data[k:])
			if (err1 == nil) != (err2 == nil) || !bytes.Equal(one, two) || err1 != nil && code(err1) != code(err2) {
				t.Fatalf("in=%v: cut at %d changes the result: %q %v / %q %v", in, k, one, err1, two, err2)
			}
		}
		enc, err := feedAll(testStream(t, keys, binaryFormat, true, "a", "v*", "b"), data)
		if err != nil {
			return
		}
		dec, err := feedAll(testStream(t, keys, binaryFormat, false, "a", "v*", "b"), enc)
		if err != nil && code(err) == "XX000" && (bytes.Contains(data, []byte("PH\x01")) || bytes.Contains(bytes.ToLower(data), []byte("x504801"))) {
			return // the safety net, for a non-PHI field that looks like ciphertext
		}
		if err != nil || !bytes.Equal(dec, data) {
			t.Fatalf("decrypting what was encrypted: %v\n got %q\nwant %q", err, dec, data)
		}
		again, err := feedAll(testStream(t, keys, binaryFormat, true, "a", "v*", "b"), dec)
		if err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("round trip not stable: %v", err)
		}
	})
}

func code(err error) string {
	if pe := pgerr.As(err); pe != nil {
		return pe.Code.String()
	}
	return ""
}

package phi

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// typeValues are text literals for each of typeCols. Numbers have no
// trailing fraction zeros: phiproxy's canonical numeric drops them so that
// equal values encrypt equally (123.4500 reads back as 123.45, see
// TestNumericAndJSONBEquality).
var typeValues = []string{
	"héllo wörld", "varchar value", "1980-01-02", "2020-05-06 07:08:09.123456", "2020-05-06 07:08:09.5+02",
	"-5", "9000000000000000", "123.45", "true", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `{"b": 1, "a": [1, 2.5, "x"]}`,
}

func colNames() string {
	var n []string
	for _, c := range typeCols {
		n = append(n, c.name)
	}
	return strings.Join(n, ", ")
}

func TestLogicalTypesTextAndBinary(t *testing.T) {
	ctx, p := start(t)
	conn, direct := p.via(pgx.QueryExecModeCacheStatement), p.direct(pgx.QueryExecModeCacheStatement)
	var lits []string
	for _, v := range typeValues {
		lits = append(lits, "'"+strings.ReplaceAll(v, "'", "''")+"'")
	}
	// Row 1 by literals, row 2 all NULL, row 3 by text-format parameters
	// with unspecified types, row 4 by binary parameters of the logical
	// types (pgx after Describe).
	for _, c := range []*pgx.Conn{conn, direct} {
		tbl := "types"
		if c == direct {
			tbl = "types_plain"
		}
		mustExec(t, ctx, c, fmt.Sprintf("INSERT INTO %s (id, %s) VALUES (1, %s)", tbl, colNames(), strings.Join(lits, ", ")), pgx.QueryExecModeSimpleProtocol)
		mustExec(t, ctx, c, fmt.Sprintf("INSERT INTO %s (id) VALUES (2)", tbl))
		var ph []string
		params := make([][]byte, len(typeValues)+1)
		params[0] = []byte("3")
		for i, v := range typeValues {
			ph = append(ph, fmt.Sprintf("$%d", i+2))
			params[i+1] = []byte(v)
		}
		sql := fmt.Sprintf("INSERT INTO %s (id, %s) VALUES ($1, %s)", tbl, colNames(), strings.Join(ph, ", "))
		if _, err := c.PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Close(); err != nil {
			t.Fatalf("%s: %v", tbl, err)
		}
		// Binary: read row 1 typed, write it back as row 4.
		vals, err := c.Query(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE id = 1", colNames(), tbl))
		if err != nil {
			t.Fatal(err)
		}
		if !vals.Next() {
			t.Fatal(vals.Err())
		}
		row, err := vals.Values()
		vals.Close()
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, ctx, c, sql, append([]any{4}, row...)...)
	}
	// Raw bytes, text and binary results, through phiproxy and direct.
	for _, format := range []int16{0, 1} {
		for id := 1; id <= 4; id++ {
			for i, col := range typeCols {
				q := func(c *pgx.Conn, tbl string) ([][]byte, []pgconn.FieldDescription) {
					res := c.PgConn().ExecParams(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE id = $1", col.name, tbl), [][]byte{[]byte(fmt.Sprint(id))}, nil, nil, []int16{format}).Read()
					if res.Err != nil {
						t.Fatalf("%s %s: %v", tbl, col.name, res.Err)
					}
					return res.Rows[0], res.FieldDescriptions
				}
				got, gotFD := q(conn, "types")
				want, wantFD := q(direct, "types_plain")
				if !reflect.DeepEqual(got, want) {
					t.Errorf("row %d %s format %d: through phiproxy %q, direct %q (input %q)", id, col.name, format, got, want, typeValues[i])
				}
				g, w := gotFD[0], wantFD[0]
				if g.DataTypeOID != w.DataTypeOID || g.DataTypeSize != w.DataTypeSize || g.Format != w.Format || (w.TypeModifier == -1) != (g.TypeModifier == -1) {
					t.Errorf("%s: field description %+v, want %+v", col.name, g, w)
				}
			}
		}
	}
	// Every mode reads the same Go values.
	for _, mode := range modes {
		c := p.via(mode)
		d := p.direct(mode)
		for id := 1; id <= 4; id++ {
			read := func(c *pgx.Conn, tbl string) []any {
				rows, err := c.Query(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE id = $1", colNames(), tbl), id)
				if err != nil {
					t.Fatal(err)
				}
				defer rows.Close()
				if !rows.Next() {
					t.Fatalf("%s: %v", tbl, rows.Err())
				}
				v, err := rows.Values()
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			if got, want := read(c, "types"), read(d, "types_plain"); !reflect.DeepEqual(got, want) {
				t.Errorf("%s row %d:\nthrough phiproxy %v\ndirect %v", mode, id, got, want)
			}
		}
	}
}

func TestBatchLargeValuesAndPrepare(t *testing.T) {
	ctx, p := start(t)
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), mode)
			base := 60000 + 100*int(mode)
			b := &pgx.Batch{}
			b.Queue("INSERT INTO patients (id, name, ssn, diagnosis) VALUES ($1, 'batch', $2, $3)", base+1, "444-44-4444", big)
			b.Queue("INSERT INTO visits (id, patient_ssn, note) VALUES ($1, $2, 'v')", base+1, "444-44-4444")
			b.Queue("SELECT p.diagnosis, v.patient_ssn FROM patients p JOIN visits v ON v.patient_ssn = p.ssn WHERE p.id = $1", base+1)
			br := conn.SendBatch(ctx, b)
			if _, err := br.Exec(); err != nil {
				t.Fatal(err)
			}
			if _, err := br.Exec(); err != nil {
				t.Fatal(err)
			}
			var diag, ssn string
			if err := br.QueryRow().Scan(&diag, &ssn); err != nil {
				t.Fatal(err)
			}
			if diag != big || ssn != "444-44-4444" {
				t.Fatalf("batch join read %d bytes, ssn ok %v", len(diag), ssn == "444-44-4444")
			}
			if err := br.Close(); err != nil {
				t.Fatal(err)
			}
			if mode == pgx.QueryExecModeExec {
				// A refusal in a pipelined batch fails the batch's implicit
				// transaction, as a server error would.
				b := &pgx.Batch{}
				b.Queue("INSERT INTO blobs (id) VALUES (616161)")
				b.Queue("SELECT id FROM patients WHERE ssn < $1", "x")
				b.Queue("SELECT 1")
				br := conn.SendBatch(ctx, b)
				if _, err := br.Exec(); err != nil {
					t.Fatal(err)
				}
				_, err := br.Exec()
				expectCode(t, err, "0A000", "refused statement in a batch")
				br.Close()
				wantCount(t, ctx, conn, 0, "batch not rolled back", "SELECT count(*) FROM blobs WHERE id = 616161")
			}
			stillWorks(t, ctx, conn)
			// The big value by literal, too.
			mustExec(t, ctx, conn, fmt.Sprintf("UPDATE patients SET diagnosis = '%s' WHERE id = %d", big[:len(big)-1]+"!", base+1), pgx.QueryExecModeSimpleProtocol)
			if err := conn.QueryRow(ctx, "SELECT diagnosis FROM patients WHERE id = $1", base+1).Scan(&diag); err != nil || diag != big[:len(big)-1]+"!" {
				t.Fatalf("1 MiB literal: %d bytes, %v", len(diag), err)
			}
		})
	}
	// SQL-level PREPARE / EXECUTE / DEALLOCATE.
	conn := p.via(pgx.QueryExecModeSimpleProtocol)
	mustExec(t, ctx, conn, "PREPARE byssn(text) AS SELECT name, ssn FROM patients WHERE ssn = $1")
	var name, ssn string
	if err := conn.QueryRow(ctx, "EXECUTE byssn('444-44-4444')").Scan(&name, &ssn); err != nil || ssn != "444-44-4444" {
		t.Fatalf("EXECUTE: %v", err)
	}
	mustExec(t, ctx, conn, "PREPARE ins(int, text) AS INSERT INTO patients (id, ssn) VALUES ($1, $2)")
	mustExec(t, ctx, conn, "EXECUTE ins(70001, '777-77-7777')")
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 70001").Scan(&ssn); err != nil || ssn != "777-77-7777" {
		t.Fatalf("EXECUTE insert: %v", err)
	}
	mustExec(t, ctx, conn, "DEALLOCATE ALL")
	// search_path: a path without public hides the table, as in PostgreSQL.
	mustExec(t, ctx, conn, "SET search_path = pg_catalog")
	_, err := conn.Exec(ctx, "SELECT ssn FROM patients")
	if err == nil {
		t.Fatal("patients visible without public in search_path")
	}
	mustExec(t, ctx, conn, "RESET search_path")
	if err := conn.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 70001").Scan(&ssn); err != nil || ssn != "777-77-7777" {
		t.Fatalf("after RESET search_path: %v", err)
	}
}

// TestRowLimitedExecute drives the extended protocol by hand: Execute with
// a row limit, PortalSuspended, a second Execute, Describe of a portal and
// a statement, Close, and an error that skips to Sync.
func TestRowLimitedExecute(t *testing.T) {
	ctx, conn := proxied(t, pgx.QueryExecModeCacheStatement)
	for i := 0; i < 5; i++ {
		mustExec(t, ctx, conn, "INSERT INTO visits (id, patient_ssn) VALUES ($1, $2)", 80000+i, fmt.Sprintf("ssn-%d", i))
	}
	pc := conn.PgConn()
	fe := pc.Frontend()
	fe.Send(&pgproto3.Parse{Name: "s1", Query: "SELECT id, patient_ssn FROM visits WHERE id >= $1 ORDER BY id"})
	fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: "s1"})
	fe.Send(&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1", Parameters: [][]byte{[]byte("80000")}, ResultFormatCodes: []int16{0, 1}})
	fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: "p1"})
	fe.Send(&pgproto3.Execute{Portal: "p1", MaxRows: 2})
	fe.Send(&pgproto3.Execute{Portal: "p1", MaxRows: 2})
	fe.Send(&pgproto3.Execute{Portal: "p1"})
	fe.Send(&pgproto3.Close{ObjectType: 'P', Name: "p1"})
	fe.Send(&pgproto3.Sync{})
	// An error skips to Sync: the Bind names a statement that does not exist.
	fe.Send(&pgproto3.Bind{PreparedStatement: "nope"})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Sync{})
	// A refusal in the middle of a batch.
	fe.Send(&pgproto3.Parse{Query: "SELECT id FROM visits ORDER BY patient_ssn"})
	fe.Send(&pgproto3.Bind{})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Sync{})
	fe.Send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("80004")}})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Close{ObjectType: 'S', Name: "s1"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for ready := 0; ready < 4; {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = append(got, fmt.Sprintf("row %s %q", m.Values[0], m.Values[1]))
		case *pgproto3.RowDescription:
			got = append(got, fmt.Sprintf("desc %d/%d", m.Fields[1].DataTypeOID, m.Fields[1].Format))
		case *pgproto3.ParameterDescription:
			got = append(got, fmt.Sprintf("params %v", m.ParameterOIDs))
		case *pgproto3.ErrorResponse:
			got = append(got, "error "+m.Code)
		case *pgproto3.CommandComplete:
			got = append(got, "complete "+string(m.CommandTag))
		case *pgproto3.ReadyForQuery:
			got = append(got, "ready "+string(m.TxStatus))
			ready++
		default:
			got = append(got, strings.TrimPrefix(fmt.Sprintf("%T", msg), "*pgproto3."))
		}
	}
	want := []string{
		"ParseComplete", "params [23]", "desc 25/0", "BindComplete", "desc 25/1",
		`row 80000 "ssn-0"`, `row 80001 "ssn-1"`, "PortalSuspended",
		`row 80002 "ssn-2"`, `row 80003 "ssn-3"`, "PortalSuspended",
		`row 80004 "ssn-4"`, "complete SELECT 1", "CloseComplete", "ready I",
		"error 26000", "ready I",
		"error 0A000", "ready I",
		"BindComplete", `row 80004 "ssn-4"`, "complete SELECT 1", "CloseComplete", "ready I",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !bytes.Equal([]byte("x"), []byte("x")) {
		t.Fatal()
	}
}

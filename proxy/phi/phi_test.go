package phi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/crypto"
)

type patient struct {
	ID        int32
	Name      string
	SSN       *string
	Diagnosis *string
	DOB       *time.Time
	MRN       *int64
}

func ptr[T any](v T) *T { return &v }

func TestRoundTripEveryMode(t *testing.T) {
	ctx, p := start(t)
	direct := p.direct(pgx.QueryExecModeSimpleProtocol)
	for mi, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connect(t, ctx, p.dsn(), mode)
			base := int32(100 * (mi + 1))
			ins := []patient{
				{base + 1, "Ann", ptr("123-45-6789"), ptr("flu"), ptr(time.Date(1980, 1, 2, 0, 0, 0, 0, time.UTC)), ptr(int64(42))},
				{base + 2, "Bob", ptr("987-65-4321"), nil, ptr(time.Date(1975, 12, 31, 0, 0, 0, 0, time.UTC)), ptr(int64(-7))},
				{base + 3, "Cid", nil, ptr(strings.Repeat("é", 10)), nil, nil},
			}
			for _, pt := range ins {
				for _, tbl := range []struct {
					c    *pgx.Conn
					name string
				}{{conn, "patients"}, {direct, "patients_plain"}} {
					if _, err := tbl.c.Exec(ctx, "INSERT INTO "+tbl.name+" (id, name, ssn, diagnosis, dob, mrn) VALUES ($1, $2, $3, $4, $5, $6)",
						pt.ID, pt.Name, pt.SSN, pt.Diagnosis, pt.DOB, pt.MRN); err != nil {
						t.Fatalf("insert into %s: %v", tbl.name, err)
					}
				}
			}
			// Literals too.
			lit := fmt.Sprintf("INSERT INTO %%s (id, name, ssn, diagnosis, dob, mrn) VALUES (%d, 'Dee', '555-55-5555', 'it''s bad', '1990-1-2', 12)", base+4)
			if _, err := conn.Exec(ctx, fmt.Sprintf(lit, "patients")); err != nil {
				t.Fatal(err)
			}
			if _, err := direct.Exec(ctx, fmt.Sprintf(lit, "patients_plain")); err != nil {
				t.Fatal(err)
			}
			q := "SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE id BETWEEN $1 AND $2 ORDER BY id"
			if got := twin(t, conn, direct, q, base, base+99); len(got) != 4 {
				t.Fatalf("through phiproxy: %q, want 4 rows", got)
			}
			// Equality on deterministic columns: parameter, literal, IN, =
			// ANY. With QueryExecModeSimpleProtocol pgx sends a slice as a
			// '{...}' array literal, which the proxy encrypts element by
			// element.
			for _, c := range []struct {
				sql   string
				args  []any
				empty bool // the twin returns no rows either
			}{
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn = $1 AND id > $2", []any{"123-45-6789", base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn = '987-65-4321' AND id > $1", []any{base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn IN ('123-45-6789', '555-55-5555') AND id > $1 ORDER BY id", []any{base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn = ANY($1) AND id > $2 ORDER BY id", []any{[]string{"123-45-6789", "987-65-4321"}, base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn = ANY($1::text[]) AND id > $2 ORDER BY id", []any{[]*string{ptr("555-55-5555"), nil, ptr("not-there")}, base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn = ANY($1) AND id > $2", []any{[]string{}, base}, true},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn <> ALL($1) AND id > $2 ORDER BY id", []any{[]string{"123-45-6789", "it's {odd}, \\\"quoted\""}, base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE mrn = ANY($1) AND id > $2 ORDER BY id", []any{[]int64{42, 12, -1}, base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE ssn = ANY('{123-45-6789,\"555-55-5555\"}') AND id > $1 ORDER BY id", []any{base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE mrn = $1 AND id > $2", []any{int64(42), base}, false},
				{"SELECT id, name, ssn, diagnosis, dob, mrn FROM %[1]s WHERE mrn = 12 AND id > $1", []any{base}, false},
			} {
				if got := twin(t, conn, direct, c.sql, c.args...); (len(got) == 0) != c.empty {
					t.Fatalf("%s: %q", c.sql, got)
				}
			}
			// Update and delete by deterministic value.
			for _, tbl := range []struct {
				c    *pgx.Conn
				name string
			}{{conn, "patients"}, {direct, "patients_plain"}} {
				if _, err := tbl.c.Exec(ctx, "UPDATE "+tbl.name+" SET diagnosis = $1, dob = NULL WHERE ssn = $2 AND id > $3", "cold", "123-45-6789", base); err != nil {
					t.Fatal(err)
				}
				if _, err := tbl.c.Exec(ctx, "DELETE FROM "+tbl.name+" WHERE ssn = $1 AND id > $2", "987-65-4321", base); err != nil {
					t.Fatal(err)
				}
			}
			if got := twin(t, conn, direct, q, base, base+99); len(got) != 3 {
				t.Fatalf("after update/delete, through phiproxy: %q, want 3 rows", got)
			}
		})
	}
	// The table holds ciphertext.
	var ssn []byte
	if err := direct.QueryRow(ctx, "SELECT ssn FROM patients WHERE id = 101").Scan(&ssn); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(ssn, []byte("PH\x01")) || bytes.Contains(ssn, []byte("123-45-6789")) {
		t.Fatalf("stored ssn is not an envelope")
	}
	var text string
	if err := direct.QueryRow(ctx, "SELECT ssn::text FROM patients WHERE id = 101").Scan(&text); err != nil || !strings.HasPrefix(text, `\x504801`) {
		t.Fatalf("stored ssn as text: %v", err)
	}
	// PostgreSQL itself refuses plaintext written around the proxy.
	_, err := direct.Exec(ctx, "INSERT INTO patients (id, ssn) VALUES (99999, '123-45-6789'::bytea)")
	if sqlstate(err) != "23514" {
		t.Fatalf("direct plaintext write: %v, want 23514 from %s", err, crypto.EnvelopeCheckName(testCfg.Columns()[0]))
	}
}

func TestSimpleProtocolTextResults(t *testing.T) {
	ctx, p := start(t)
	conn := p.via(pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "INSERT INTO patients (id, name, ssn, dob) VALUES (9001, 'Multi', '111-22-3333', '2001-02-03'); INSERT INTO visits (id, patient_ssn) VALUES (9001, '111-22-3333')"); err != nil {
		t.Fatal(err)
	}
	// Results are text in the simple protocol; multi-statement strings.
	res, err := conn.PgConn().Exec(ctx, "SELECT ssn, dob FROM patients WHERE id = 9001; SELECT 1; SELECT v.patient_ssn, p.name FROM visits v JOIN patients p ON p.ssn = v.patient_ssn WHERE v.id = 9001").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || string(res[0].Rows[0][0]) != "111-22-3333" || string(res[0].Rows[0][1]) != "2001-02-03" ||
		res[0].FieldDescriptions[0].DataTypeOID != 25 || res[0].FieldDescriptions[1].DataTypeOID != 1082 || res[0].FieldDescriptions[1].DataTypeSize != 4 ||
		string(res[2].Rows[0][0]) != "111-22-3333" || string(res[2].Rows[0][1]) != "Multi" {
		t.Fatalf("got %+v", res)
	}
}

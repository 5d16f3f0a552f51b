package crypto

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// The cluster is started on first use (the envelope constraint tests
// only), so that the other crypto tests stay fast; TestMain stops it.
var shared = testenv.LazyCluster{Options: pgcluster.Options{NoTLS: true}}

func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

// Column is config's, as the DDL functions take it.
type Column = config.Column

// testDB returns a connection to a fresh database of the shared cluster.
func testDB(t *testing.T) *pgx.Conn { return shared.FreshDB(t) }

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
}

func utf8Valid(s string) bool { return utf8.ValidString(s) }

func TestEnvelopeCheckConstraint(t *testing.T) {
	ctx := context.Background()
	conn := testDB(t)
	mustExec(t, conn, `CREATE SCHEMA "Clinic"; CREATE TABLE "Clinic"."Patients" (id int, "S""sn" bytea);
INSERT INTO "Clinic"."Patients" VALUES (0, 'legacy plaintext');`)
	col := Column{Schema: "Clinic", Table: "Patients", Name: `S"sn`}
	if got, want := EnvelopeCheckSQL(col), `ALTER TABLE "Clinic"."Patients" ADD CONSTRAINT "phiproxy_S""sn_envelope" CHECK ("S""sn" LIKE E'\\x50480125'::bytea) NOT VALID`; got != want {
		t.Errorf("EnvelopeCheckSQL =\n%s\nwant\n%s", got, want)
	}
	// The DDL means the same whatever standard_conforming_strings is when
	// it runs: PostgreSQL stores the same constraint.
	mustExec(t, conn, `CREATE TABLE "Clinic"."Twin" (id int, "S""sn" bytea); SET standard_conforming_strings = off`)
	mustExec(t, conn, EnvelopeCheckSQL(Column{Schema: "Clinic", Table: "Twin", Name: `S"sn`}))
	mustExec(t, conn, `SET standard_conforming_strings = on`)
	// Bytes that are LIKE wildcards or the escape after the header are
	// data, not pattern; anything without the exact header is refused.
	for _, c := range []struct {
		v  []byte
		ok bool
	}{
		{[]byte("PH\x01"), true},
		{[]byte("PH\x01%_\\\x00\xff"), true},
		{[]byte("PH\x02abc"), false},
		{[]byte("P_\x01abc"), false},
		{[]byte("%PH\x01"), false},
		{[]byte("xPH\x01"), false},
		{[]byte{}, false},
	} {
		_, err := conn.Exec(ctx, `INSERT INTO "Clinic"."Twin" VALUES (1, $1)`, c.v)
		if (err == nil) != c.ok {
			t.Errorf("write of %q: err = %v, want accepted = %v", c.v, err, c.ok)
		}
	}
	// NOT VALID: existing plaintext does not stop the constraint from being added.
	mustExec(t, conn, EnvelopeCheckSQL(col))
	var defs []string
	rows, err := conn.Query(ctx, `SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1 ORDER BY conrelid::regclass::text`, EnvelopeCheckName(col))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		defs = append(defs, d)
	}
	if len(defs) != 2 || defs[0] != defs[1] {
		t.Fatalf("the constraint added under standard_conforming_strings off and on differs: %q", defs)
	}
	for _, stdStrings := range []string{"on", "off"} {
		mustExec(t, conn, "SET standard_conforming_strings = "+stdStrings)
		_, err := conn.Exec(ctx, `INSERT INTO "Clinic"."Patients" VALUES (1, $1)`, []byte("123-45-6789"))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "23514" || pe.ConstraintName != EnvelopeCheckName(col) {
			t.Errorf("plaintext write (standard_conforming_strings=%s): got %v, want 23514 from %s", stdStrings, err, EnvelopeCheckName(col))
		}
		if _, err := conn.Exec(ctx, `INSERT INTO "Clinic"."Patients" VALUES (2, $1), (3, NULL)`, append([]byte(EnvelopeHeader), 1, 2, 3, 4, 5)); err != nil {
			t.Errorf("envelope-prefixed write refused: %v", err)
		}
		mustExec(t, conn, `DELETE FROM "Clinic"."Patients" WHERE id > 0`)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO "Clinic"."Patients" VALUES (4, '\x5048'::bytea)`); err == nil {
		t.Error("a truncated header must be refused")
	}
	// VALIDATE fails while plaintext remains, and passes once it is gone.
	if _, err := conn.Exec(ctx, EnvelopeValidateSQL(col)); err == nil {
		t.Error("VALIDATE must fail while legacy plaintext remains")
	}
	mustExec(t, conn, `UPDATE "Clinic"."Patients" SET "S""sn" = decode('50480100', 'hex')`)
	mustExec(t, conn, EnvelopeValidateSQL(col))
}

func TestEnvelopeCheckNameFitsIdentifierLimit(t *testing.T) {
	long := strings.Repeat("é", 40)
	a := EnvelopeCheckName(Column{Schema: "s", Table: "t", Name: long})
	b := EnvelopeCheckName(Column{Schema: "s", Table: "u", Name: long})
	if len(a) > 63 || a == b || !strings.HasSuffix(a, "_envelope") {
		t.Errorf("names %q (%d bytes) and %q", a, len(a), b)
	}
	if !utf8Valid(a) {
		t.Errorf("name %q splits a UTF-8 sequence", a)
	}
	if got := EnvelopeCheckName(Column{Name: "ssn"}); got != "phiproxy_ssn_envelope" {
		t.Errorf("short name = %q", got)
	}
}

package integration

// Catalog introspection through phiproxy with real clients (issue 17,
// item 1): GORM's AutoMigrate and pgjdbc's getColumns.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// gormVisit is the fixture's visits table as a GORM model, with the
// logical type of its PHI column. (GORM's AutoMigrate also reads
// SELECT * FROM the table, which the fixture's patients refuses: its
// secret column is default: deny.)
type gormVisit struct {
	ID         int32      `gorm:"primaryKey"`
	PatientSSN *string    `gorm:"column:patient_ssn"`
	VisitedOn  *time.Time `gorm:"type:date"`
}

func (gormVisit) TableName() string { return "visits" }

// TestGORMAutoMigrate (issue 17, item 1): GORM's usual startup idiom,
// AutoMigrate, through phiproxy reads the PHI columns' logical types from
// the catalog and leaves the table alone, as it does on the plaintext twin
// (it used to send ALTER COLUMN patient_ssn TYPE text, refused with
// 0A000). Then a row written with GORM is found by its patient_ssn.
func TestGORMAutoMigrate(t *testing.T) {
	p := startPHIProxy(t)
	open := func(dsn string) (*gorm.DB, *[]string) {
		var (
			mu   sync.Mutex
			sqls []string
		)
		db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		// Exec (ALTER TABLE …) runs the Raw callbacks.
		err = db.Callback().Raw().After("*").Register("record", func(d *gorm.DB) {
			mu.Lock()
			sqls = append(sqls, d.Statement.SQL.String())
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		return db, &sqls
	}
	via, viaSQL := open(appDSN(p.addr(), phiDB))
	direct, _ := open(appDSN(fixture.cluster.Addr(), phiDB))
	if err := direct.Table("visits_plain").AutoMigrate(&gormVisit{}); err != nil {
		t.Fatalf("AutoMigrate on the plaintext twin: %v", err)
	}
	if err := via.AutoMigrate(&gormVisit{}); err != nil {
		t.Fatalf("AutoMigrate through phiproxy: %v", err)
	}
	for _, s := range *viaSQL {
		if strings.Contains(strings.ToUpper(s), "ALTER TABLE") {
			t.Errorf("AutoMigrate through phiproxy sent %q", s)
		}
	}
	ssn := "123-45-6789"
	day := time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)
	if err := via.Create(&gormVisit{PatientSSN: &ssn, VisitedOn: &day}).Error; err != nil {
		t.Fatal(err)
	}
	var got gormVisit
	if err := via.Where("patient_ssn = ?", ssn).First(&got).Error; err != nil {
		t.Fatal(err)
	}
	if got.PatientSSN == nil || *got.PatientSSN != ssn {
		t.Errorf("read back %+v", got)
	}
	var stored []byte
	if err := phiDirect(t).QueryRow(context.Background(), "SELECT patient_ssn FROM visits WHERE id = $1", got.ID).Scan(&stored); err != nil || !strings.HasPrefix(string(stored), "PH\x01") {
		t.Errorf("visits.patient_ssn stored as %q (%v), want an envelope", stored, err)
	}
}

// TestJDBCGetColumnsThroughPHIProxy (issue 17, item 1): pgjdbc's
// DatabaseMetaData.getColumns reports patients' PHI columns with their
// logical types, as it reports patients_plain's directly (it reported
// bytea, SQL type -2).
func TestJDBCGetColumnsThroughPHIProxy(t *testing.T) {
	p := startPHIProxy(t)
	url := func(hp string) string { return "jdbc:postgresql://" + hp + "/" + phiDB + "?sslmode=disable" }
	got := jdbc(t, "Columns", url(p.addr()), "app", "app-pw", "patients")
	want := jdbc(t, "Columns", url(fixture.cluster.Addr()), "app", "app-pw", "patients_plain")
	// The serial id's default names its own sequence.
	want = strings.ReplaceAll(want, "patients_plain_id_seq", "patients_id_seq")
	if got != want || !strings.Contains(got, "ssn\t12\ttext") {
		t.Errorf("getColumns through phiproxy:\n%s\ndirectly on the twin:\n%s", got, want)
	}
}

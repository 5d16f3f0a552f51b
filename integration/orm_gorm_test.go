package integration

import (
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"
)

// The GORM stack: AutoMigrate at startup, CreateInBatches, IN lists,
// Joins, Transaction with SavePoint/RollbackTo and a nested Transaction,
// OnConflict upserts, Rows/ScanRows and FindInBatches.

// ormPatient is a row of patients as every Go stack writes, reads and
// prints it (GORM's model; database/sql scans into it).
type ormPatient struct {
	ID        int32    `gorm:"primaryKey" json:"id"`
	Name      string   `gorm:"not null" json:"name"`
	SSN       *string  `gorm:"column:ssn;unique" json:"ssn"`
	Diagnosis *string  `gorm:"column:diagnosis" json:"diagnosis"`
	Notes     *string  `gorm:"column:notes" json:"notes"`
	DOB       *ormDate `gorm:"column:dob;type:date" json:"dob"`
	Active    bool     `gorm:"not null;default:true" json:"active"`
}

func (ormPatient) TableName() string { return "patients" }

// ormDate is a date column (a sql.NullTime, as GORM models hold one) that
// prints as the stacks print a date: "2006-01-02", or null.
type ormDate struct{ sql.NullTime }

func (d ormDate) MarshalJSON() ([]byte, error) {
	if !d.Valid {
		return []byte("null"), nil
	}
	return json.Marshal(d.Time.Format(time.DateOnly))
}

type gormPHIVisit struct {
	ID         int32     `gorm:"primaryKey"`
	PatientSSN string    `gorm:"column:patient_ssn;not null"`
	VisitedOn  time.Time `gorm:"type:date;not null"`
	Reason     *string
}

func (gormPHIVisit) TableName() string { return "visits" }

func str(s string) *string { return &s }

func date(s string) *ormDate {
	d, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return &ormDate{sql.NullTime{Time: d, Valid: true}}
}

// ormSeed are the patients every Go stack writes in bulk.
func ormSeed() []ormPatient {
	return []ormPatient{
		{Name: "Ada", SSN: str("111-11-1111"), Diagnosis: str("flu"), Notes: str("first visit"), DOB: date("1980-01-02"), Active: true},
		{Name: "Bob", SSN: str("222-22-2222"), Diagnosis: nil, Notes: str("ünïcödé \"q\" 'x'"), DOB: date("1975-06-30"), Active: true},
		{Name: "Cy", SSN: str("333-33-3333"), Diagnosis: str("asthma"), Notes: nil, DOB: nil, Active: true},
		{Name: "Di", SSN: str("444-44-4444"), Diagnosis: str("flu"), Notes: str(""), DOB: date("2000-02-29"), Active: true},
		{Name: "Ed", SSN: nil, Diagnosis: str("none"), Notes: str("no ssn"), DOB: date("1999-12-31"), Active: true},
	}
}

// sqlstate is the SQLSTATE of err (pgx's error), or its text.
func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	if err == nil {
		return "none"
	}
	return err.Error()
}

func runGORM(t *testing.T, dsn string, phi bool) string {
	o := &ormLines{t: t}
	must := func(step string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("GORM %s (%s): %v", step, ormMode(phi), err)
		}
	}
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	must("open", err)
	sqlDB, err := db.DB()
	must("DB", err)
	defer sqlDB.Close()

	must("AutoMigrate", db.AutoMigrate(&ormPatient{}, &gormPHIVisit{}))
	cols, err := db.Migrator().ColumnTypes(&ormPatient{})
	must("ColumnTypes", err)
	var types []string
	for _, c := range cols {
		n, _ := c.Nullable()
		types = append(types, c.Name()+":"+c.DatabaseTypeName()+map[bool]string{true: " null", false: ""}[n])
	}
	o.put(map[string]any{"columns": types})

	seed := ormSeed()
	must("CreateInBatches", db.CreateInBatches(&seed, 3).Error)
	o.put(map[string]any{"created": seed})
	visits := []gormPHIVisit{
		{PatientSSN: "111-11-1111", VisitedOn: date("2024-01-05").Time, Reason: str("checkup")},
		{PatientSSN: "222-22-2222", VisitedOn: date("2024-02-06").Time},
		{PatientSSN: "111-11-1111", VisitedOn: date("2024-03-07").Time, Reason: str("follow-up")},
		{PatientSSN: "999-99-9999", VisitedOn: date("2024-04-08").Time, Reason: str("walk-in")},
	}
	must("Create visits", db.Create(&visits).Error)

	var one ormPatient
	must("First by ssn", db.Where("ssn = ?", "222-22-2222").First(&one).Error)
	o.put(map[string]any{"by ssn": one})
	var one2 ormPatient
	must("First by struct", db.Where(&ormPatient{SSN: str("333-33-3333")}).First(&one2).Error)
	o.put(map[string]any{"by struct": one2})
	var in []ormPatient
	must("IN", db.Where("ssn IN ?", []string{"111-11-1111", "444-44-4444", "000-00-0000"}).Order("id").Find(&in).Error)
	o.put(map[string]any{"in": in})
	var nulls int64
	must("Count", db.Model(&ormPatient{}).Where("diagnosis IS NULL OR dob IS NULL").Count(&nulls).Error)
	o.put(map[string]any{"null count": nulls})

	type joined struct {
		ID        int32
		Name      string
		SSN       string
		VisitedOn ormDate
		Reason    *string
	}
	var js []joined
	must("Joins", db.Table("visits").Select("visits.id, patients.name, patients.ssn, visits.visited_on, visits.reason").
		Joins("JOIN patients ON patients.ssn = visits.patient_ssn").Order("visits.id").Scan(&js).Error)
	var jout []any
	for _, j := range js {
		jout = append(jout, []any{j.ID, j.Name, j.SSN, j.VisitedOn, j.Reason})
	}
	o.put(map[string]any{"join": jout})
	var withVisits []ormPatient
	must("EXISTS", db.Where("EXISTS (SELECT 1 FROM visits v WHERE v.patient_ssn = patients.ssn)").Order("id").Find(&withVisits).Error)
	o.put(map[string]any{"exists": withVisits})

	// A transaction with a savepoint rolled back, and a nested
	// transaction (a savepoint of GORM's own) that fails.
	err = db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&ormPatient{}).Where("ssn = ?", "111-11-1111").Update("diagnosis", "bronchitis").Error; err != nil {
			return err
		}
		if err := tx.SavePoint("before_notes").Error; err != nil {
			return err
		}
		if err := tx.Model(&ormPatient{}).Where("ssn = ?", "111-11-1111").Update("notes", "rolled back").Error; err != nil {
			return err
		}
		if err := tx.RollbackTo("before_notes").Error; err != nil {
			return err
		}
		nested := tx.Transaction(func(tx2 *gorm.DB) error {
			if err := tx2.Create(&ormPatient{Name: "Ghost", SSN: str("555-55-5555"), Active: true}).Error; err != nil {
				return err
			}
			return errors.New("abandon the nested transaction")
		})
		if nested == nil {
			return errors.New("nested transaction succeeded")
		}
		return tx.Model(&ormPatient{}).Where("ssn IN ?", []string{"222-22-2222"}).Updates(map[string]any{"diagnosis": "cold", "dob": date("1975-07-01").Time}).Error
	})
	must("Transaction", err)
	var afterTx []ormPatient
	must("after tx", db.Where("ssn IN ?", []string{"111-11-1111", "222-22-2222", "555-55-5555"}).Order("id").Find(&afterTx).Error)
	o.put(map[string]any{"after transaction": afterTx})

	ups := []ormPatient{
		{Name: "Ada", SSN: str("111-11-1111"), Diagnosis: str("pneumonia"), Notes: str("upserted"), DOB: date("1980-01-02"), Active: true},
		{Name: "Fay", SSN: str("666-66-6666"), Diagnosis: str("migraine"), Notes: str("new"), DOB: date("1990-09-09"), Active: true},
	}
	must("upsert", db.Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "ssn"}},
		DoUpdates: clause.AssignmentColumns([]string{"diagnosis", "notes"}),
	}).Create(&ups).Error)
	must("upsert DoNothing", db.Clauses(clause.OnConflict{DoNothing: true}).Create(&ormPatient{Name: "Dup", SSN: str("333-33-3333"), Active: true}).Error)
	must("Save", db.Save(&ormPatient{ID: one2.ID, Name: "Cy", SSN: str("333-33-3333"), Diagnosis: str("asthma, mild"), Active: false}).Error)

	res := db.Model(&ormPatient{}).Where("ssn = ?", "444-44-4444").Updates(ormPatient{Notes: str("updated"), Diagnosis: str("cold")})
	must("Updates", res.Error)
	o.put(map[string]any{"updated": res.RowsAffected})
	res = db.Where("patient_ssn = ?", "999-99-9999").Delete(&gormPHIVisit{})
	must("Delete", res.Error)
	o.put(map[string]any{"deleted visits": res.RowsAffected})

	// Streaming: Rows with ScanRows, and FindInBatches.
	rows, err := db.Model(&ormPatient{}).Where("active").Order("id").Rows()
	must("Rows", err)
	var streamed []ormPatient
	for rows.Next() {
		var p ormPatient
		must("ScanRows", db.ScanRows(rows, &p))
		streamed = append(streamed, p)
	}
	must("rows", rows.Err())
	rows.Close()
	o.put(map[string]any{"rows": streamed})
	var batches [][]ormPatient
	var batch []ormPatient
	must("FindInBatches", db.FindInBatches(&batch, 2, func(tx *gorm.DB, n int) error {
		batches = append(batches, slices.Clone(batch))
		return nil
	}).Error)
	o.put(map[string]any{"batches": batches})

	if phi {
		for _, r := range []struct {
			name string
			q    *gorm.DB
		}{
			{"gorm Order(ssn)", db.Order("ssn")},
			{"gorm Where(dob > ?)", db.Where("dob > ?", date("1980-01-01").Time)},
			{"gorm Where(ssn LIKE ?)", db.Where("ssn LIKE ?", "111%")},
		} {
			var ps []ormPatient
			o.put(map[string]any{"refused": r.name, "sqlstate": sqlstate(r.q.Find(&ps).Error)})
		}
	}
	return o.b.String()
}

package audit

import (
	"context"
	"testing"
)

// BenchmarkTrailRecord is the writer's cost per event: encoding, chain,
// batching, write and fsync (group-committed over b.N events from
// several goroutines, as sessions record).
func BenchmarkTrailRecord(b *testing.B) {
	for _, wait := range []bool{false, true} {
		name := "nowait"
		if wait {
			name = "wait"
		}
		b.Run(name, func(b *testing.B) {
			tr, _, _ := newTrail(b, nil)
			defer tr.Close()
			ev := benchEvent()
			ctx := context.Background()
			b.SetParallelism(4)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r, err := tr.Record(ctx, &ev, wait)
					if err != nil {
						b.Fatal(err)
					}
					if wait {
						if err := r.Wait(ctx); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		})
	}
}

// BenchmarkEventLine is one event's encoding and hash.
func BenchmarkEventLine(b *testing.B) {
	ev := benchEvent()
	ev.Prev = ZeroHash
	var buf []byte
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if buf, err = ev.AppendLine(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEvent() Event {
	rows := int64(1)
	return Event{Session: "c1f0e2d3a4b5c6d7", DBUser: "app", Roles: []string{"app", "clinician"}, EndUser: "dr.smith",
		Application: "pgbench", Client: "127.0.0.1:51234", Database: "clinic", Action: ActionRead,
		Relations: []string{"public.patients"}, Columns: []string{"public.patients.diagnosis", "public.patients.ssn"},
		Decision: DecisionAllowed, Fingerprint: "f9a2356b11f47f20", Query: "SELECT ssn, diagnosis FROM patients WHERE id = $1",
		Rows: &rows, Protocol: "extended"}
}

package admin

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/phiproxy/phiproxy/proxy/phi"
	"github.com/phiproxy/phiproxy/rewrite"
)

// Refusals are labelled by a code of phiproxy's fixed set, else by the
// code's class: a thousand distinct codes make a bounded number of series.
func TestRefusalLabelsAreBounded(t *testing.T) {
	m := NewMetrics(nil)
	end := func(code string) { m.End(&phi.Execution{Refused: true, SQLSTATE: code}) }
	end("0A000")
	end("42P99") // and 10 of the loop's below
	end("bogus")
	base := testutil.CollectAndCount(m.refusals)
	for i := 0; i < 1000; i++ {
		end(fmt.Sprintf("%02d%03d", i%100, i))
		end(fmt.Sprintf("x%d", i))
	}
	if n := testutil.CollectAndCount(m.refusals); n > base+100 {
		t.Errorf("%d refusal series after 2000 distinct codes; want at most %d (one per class)", n, base+100)
	}
	for code, want := range map[string]float64{"0A000": 1, "42000": 11, "other": 1001} {
		if got := testutil.ToFloat64(m.refusals.WithLabelValues(code)); got != want {
			t.Errorf("sqlstate=%q: %v; want %v", code, got, want)
		}
	}
}

func TestStatementOutcomes(t *testing.T) {
	m := NewMetrics(nil)
	read := &rewrite.Statement{Action: rewrite.ActionRead}
	m.End(&phi.Execution{Statement: read, Rows: 3})
	m.End(&phi.Execution{Statement: read, SQLSTATE: "22012"})
	m.End(&phi.Execution{Statement: read, Ended: true})
	m.End(&phi.Execution{Statement: &rewrite.Statement{Action: rewrite.ActionCopyIn}, Refused: true, SQLSTATE: "0A000"})
	m.End(&phi.Execution{Statement: &rewrite.Statement{}})
	for _, c := range []struct {
		action, outcome string
		want            float64
	}{{"read", "ok", 1}, {"read", "error", 1}, {"read", "ended", 1}, {"copy_in", "refused", 1}, {"other", "ok", 1}, {"write", "ok", 0}} {
		a := len(actions) - 1
		for i, x := range actions {
			if string(x) == c.action {
				a = i
			}
		}
		o := 0
		for i, x := range outcomes {
			if x == c.outcome {
				o = i
			}
		}
		if got := testutil.ToFloat64(m.statements[a][o]); got != c.want {
			t.Errorf("%s/%s: %v; want %v", c.action, c.outcome, got, c.want)
		}
	}
}

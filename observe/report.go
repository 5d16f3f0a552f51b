package observe

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Report is the coverage file read for people: a summary first, then one
// Row per observed column per fingerprint, riskiest first.
type Report struct {
	Summary Summary `json:"summary"`
	Rows    []Row   `json:"rows"`
}

// Summary is what a team lead reads first.
type Summary struct {
	// Shapes are the statement fingerprints seen; WouldRefuse of them
	// would be refused once the columns are enforced.
	Shapes      int `json:"shapes"`
	WouldRefuse int `json:"would_refuse"`
	// Executions and RefusedExecutions count the statements sent.
	Executions        int64    `json:"executions"`
	RefusedExecutions int64    `json:"refused_executions"`
	Columns           []string `json:"columns"`
	Reasons           []Reason `json:"reasons"`
	// Dropped counts statements of shapes beyond the file's bound.
	Dropped int64  `json:"dropped,omitempty"`
	Written string `json:"written,omitempty"`
}

// Reason groups the refusals with one SQLSTATE and hint.
type Reason struct {
	SQLSTATE   string `json:"sqlstate"`
	Hint       string `json:"hint"`
	Shapes     int    `json:"shapes"`
	Executions int64  `json:"executions"`
}

// Row is one record seen from one of its observed columns.
type Row struct {
	Column string `json:"column"`
	Record
}

// NewReport builds the report of f.
func NewReport(f *File) *Report {
	r := &Report{Summary: Summary{Dropped: f.Dropped, Written: f.Written, Columns: []string{}, Reasons: []Reason{}}, Rows: []Row{}}
	cols := map[string]bool{}
	reasons := map[[2]string]*Reason{}
	for _, rec := range f.Records {
		r.Summary.Shapes++
		r.Summary.Executions += rec.Count
		if rec.Verdict == Refused {
			r.Summary.WouldRefuse++
			r.Summary.RefusedExecutions += rec.Count
			k := [2]string{rec.SQLSTATE, reasonOf(rec)}
			if reasons[k] == nil {
				reasons[k] = &Reason{SQLSTATE: k[0], Hint: k[1]}
			}
			reasons[k].Shapes++
			reasons[k].Executions += rec.Count
		}
		for _, c := range rec.Columns {
			cols[c] = true
			r.Rows = append(r.Rows, Row{Column: c, Record: rec})
		}
	}
	for c := range cols {
		r.Summary.Columns = append(r.Summary.Columns, c)
	}
	sort.Strings(r.Summary.Columns)
	for _, v := range reasons {
		r.Summary.Reasons = append(r.Summary.Reasons, *v)
	}
	sort.Slice(r.Summary.Reasons, func(i, j int) bool {
		a, b := r.Summary.Reasons[i], r.Summary.Reasons[j]
		if a.Executions != b.Executions {
			return a.Executions > b.Executions
		}
		return a.SQLSTATE+a.Hint < b.SQLSTATE+b.Hint
	})
	// Riskiest first: refusals before statements that work, the most
	// frequent first.
	sort.SliceStable(r.Rows, func(i, j int) bool {
		a, b := r.Rows[i], r.Rows[j]
		if (a.Verdict == Refused) != (b.Verdict == Refused) {
			return a.Verdict == Refused
		}
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.Column != b.Column {
			return a.Column < b.Column
		}
		return a.Fingerprint < b.Fingerprint
	})
	return r
}

// reasonOf is what groups a refusal: its hint, else its message.
func reasonOf(rec Record) string {
	if rec.Hint != "" {
		return rec.Hint
	}
	return rec.Message
}

// Refusals says some observed statement would be refused.
func (r *Report) Refusals() bool { return r.Summary.WouldRefuse > 0 }

// Headline is the summary in one sentence.
func (r *Report) Headline() string {
	s := r.Summary
	return fmt.Sprintf("%d statement shape%s seen on %d observed column%s (%d execution%s); %d would be refused once enforced (%d execution%s)",
		s.Shapes, plural(s.Shapes), len(s.Columns), plural(len(s.Columns)), s.Executions, plural64(s.Executions),
		s.WouldRefuse, s.RefusedExecutions, plural64(s.RefusedExecutions))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func plural64(n int64) string { return plural(int(min(n, 2))) }

// How says how enforcement would run a working statement.
func (r Record) How() string {
	var parts []string
	if n := len(r.Literals); n > 0 {
		parts = append(parts, fmt.Sprintf("%d literal%s encrypted", n, plural(n)))
	}
	if n := len(r.Params); n > 0 {
		parts = append(parts, "parameters "+strings.Join(r.Params, ", ")+" encrypted")
	}
	if n := len(r.Results); n > 0 {
		parts = append(parts, "result columns "+strings.Join(r.Results, ", ")+" decrypted")
	}
	if len(parts) == 0 {
		return "runs unchanged"
	}
	return strings.Join(parts, "; ")
}

// WriteTable writes the report for a terminal.
func (r *Report) WriteTable(w io.Writer) error {
	s := r.Summary
	var b strings.Builder
	fmt.Fprintln(&b, r.Headline()+".")
	if s.Dropped > 0 {
		fmt.Fprintf(&b, "%d statements of further shapes were not recorded (the file keeps %d shapes).\n", s.Dropped, MaxRecords)
	}
	if len(s.Reasons) > 0 {
		fmt.Fprintln(&b, "\nWould be refused, by reason:")
		for _, rs := range s.Reasons {
			fmt.Fprintf(&b, "  %s  %d shape%s, %d execution%s: %s\n", rs.SQLSTATE, rs.Shapes, plural(rs.Shapes), rs.Executions, plural64(rs.Executions), rs.Hint)
		}
	}
	if _, err := io.WriteString(w, b.String()+"\n"); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERDICT\tCOLUMN\tCOUNT\tAPPLICATIONS\tFINGERPRINT\tSTATEMENT")
	for _, row := range r.Rows {
		v := "works"
		if row.Verdict == Refused {
			v = "REFUSED " + row.SQLSTATE
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", v, row.Column, row.Count, strings.Join(row.Applications, ","), row.Fingerprint, oneLine(row.Query))
		if row.Verdict == Refused {
			fmt.Fprintf(tw, "\t\t\t\t\t  refusal: %s\n", oneLine(row.Message))
			if row.Hint != "" {
				fmt.Fprintf(tw, "\t\t\t\t\t  hint: %s\n", oneLine(row.Hint))
			}
		} else {
			fmt.Fprintf(tw, "\t\t\t\t\t  %s\n", row.How())
		}
	}
	return tw.Flush()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// WriteJSON writes the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// CSVHeader is the header row of WriteCSV.
var csvHeader = []string{"column", "verdict", "sqlstate", "count", "applications", "db_users", "first_seen", "last_seen",
	"fingerprint", "action", "query", "message", "hint", "literals", "params", "results"}

// WriteCSV writes one line per row (no summary: it is the sum of the rows).
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	for _, row := range r.Rows {
		if err := cw.Write([]string{row.Column, row.Verdict, row.SQLSTATE, strconv.FormatInt(row.Count, 10),
			strings.Join(row.Applications, " "), strings.Join(row.DBUsers, " "), row.FirstSeen, row.LastSeen,
			row.Fingerprint, row.Action, row.Query, row.Message, row.Hint,
			strings.Join(row.Literals, " "), strings.Join(row.Params, "; "), strings.Join(row.Results, "; ")}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

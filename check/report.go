package check

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// Report is the JSON form of a check: every finding and their count.
type Report struct {
	Findings []Finding `json:"findings"`
	Summary  Summary   `json:"summary"`
}

// WriteJSON writes fs as one indented Report.
func WriteJSON(w io.Writer, fs []Finding) error {
	if fs == nil {
		fs = []Finding{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(Report{Findings: fs, Summary: Summarize(fs)})
}

// WriteTable writes fs as an aligned table (severity, object, finding,
// fix) and a summary line.
func WriteTable(w io.Writer, fs []Finding) error {
	if len(fs) == 0 {
		_, err := fmt.Fprintln(w, "no findings: the config, the keys and the database agree")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tOBJECT\tFINDING\tFIX")
	for _, f := range fs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Severity, f.Object, f.Finding, f.Fix)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	s := Summarize(fs)
	_, err := fmt.Fprintf(w, "\n%d errors, %d warnings\n", s.Errors, s.Warnings)
	return err
}

package migrate

import (
	"bytes"
	"regexp"
	"testing"
	"time"
)

func TestProgressLines(t *testing.T) {
	tests := []struct {
		name  string
		tty   bool
		total int64
		want  string
	}{
		{"a plain line with the share done and an ETA", false, 1000, `^x: 250/1000 rows \(25%\), \d+ rows/s, ETA \S+\n$`},
		{"redrawn in place on a terminal", true, 1000, "^\r\033\\[Kx: 250/1000 rows \\(25%\\), \\d+ rows/s, ETA \\S+$"},
		{"rows done again raise the total", false, 100, `^x: 250/250 rows \(100%\), \d+ rows/s\n$`},
		{"no total: rows only", false, 0, `^x: 250 rows, \d+ rows/s\n$`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			p := newProgress(&Options{Out: &out, TTY: tt.tty}, "x", tt.total)
			p.start = p.start.Add(-time.Second)
			p.done = 250
			p.print(false)
			if !regexp.MustCompile(tt.want).MatchString(out.String()) {
				t.Fatalf("%q does not match %q", out.String(), tt.want)
			}
			out.Reset()
			p.finish()
			if final := out.String(); !regexp.MustCompile(`rows/s, \d`).MatchString(final) || regexp.MustCompile(`ETA`).MatchString(final) {
				t.Fatalf("final line %q: want the duration, no ETA", final)
			}
		})
	}
}

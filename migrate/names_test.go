package migrate

import (
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/config"
)

func TestNamesAreDeterministicAndFit(t *testing.T) {
	long := strings.Repeat("x", 60)
	tests := []struct {
		name      string
		col       config.Column
		shadow    string
		trigger   string
		different config.Column // another column whose names must differ
	}{
		{"short names are spelled out", config.Column{Schema: "public", Table: "patients", Name: "ssn"},
			"ssn__phiproxy_enc", "phiproxy_enc_patients_ssn", config.Column{Schema: "public", Table: "patients", Name: "dob"}},
		{"long names are cut and hashed", config.Column{Schema: "public", Table: long, Name: long + "a"},
			"", "", config.Column{Schema: "public", Table: long, Name: long + "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, tr := ShadowName(tt.col, "enc"), triggerName(tt.col, "enc")
			if tt.shadow != "" && (s != tt.shadow || tr != tt.trigger) {
				t.Fatalf("names %q, %q; want %q, %q", s, tr, tt.shadow, tt.trigger)
			}
			for _, n := range []string{s, tr, ShadowName(tt.col, "dec"), tr + "_i"} {
				if len(n) > 63 {
					t.Errorf("%q is longer than PostgreSQL's 63 bytes", n)
				}
			}
			if ShadowName(tt.col, "enc") != s || triggerName(tt.col, "enc") != tr {
				t.Fatal("names are not deterministic")
			}
			if ShadowName(tt.different, "enc") == s || triggerName(tt.different, "enc") == tr {
				t.Fatal("two columns share a name")
			}
			if ShadowName(tt.col, "dec") == s {
				t.Fatal("encrypt and decrypt share a shadow name")
			}
		})
	}
}

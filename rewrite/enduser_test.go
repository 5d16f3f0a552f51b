package rewrite

import "testing"

func TestEndUserTagComesOnlyFromComments(t *testing.T) {
	cases := []struct {
		name, sql, want string
	}{
		{"a sqlcommenter comment", `SELECT 1 /*end_user='dr.smith',app='x'*/`, "dr.smith"},
		{"percent-encoded value", `SELECT 1 /*end_user='dr%20who'*/`, "dr who"},
		{"the last tag wins", `/*end_user='a'*/ SELECT 1 /*end_user='b'*/`, "b"},
		{"a tag inside a string literal is data, not a tag", `SELECT '/*end_user=''admin''*/'`, ""},
		{"a string literal does not blank a real tag", `SELECT 1 /*end_user='dr.smith'*/, '/*end_user=''''*/'`, "dr.smith"},
		{"an E string with an escaped quote", `SELECT E'\' /*end_user=''x''*/' /*end_user='real'*/`, "real"},
		{"a dollar-quoted body", `SELECT $q$ /*end_user='x'*/ $q$`, ""},
		{"a quoted identifier", `SELECT 1 AS "/*end_user='x'*/"`, ""},
		{"a line comment hides a block comment opener", "SELECT 1 -- /*end_user='x'*/\n", ""},
		{"nested block comments", `SELECT 1 /* outer /* inner */ end_user='y' */`, "y"},
		{"unterminated string", `SELECT '/*end_user='x'*/`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := endUserTag(tc.sql); got != tc.want {
				t.Fatalf("endUserTag(%q) = %q, want %q", tc.sql, got, tc.want)
			}
		})
	}
}

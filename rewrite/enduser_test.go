package rewrite

import (
	"strings"
	"testing"
)

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

func TestCommentTags(t *testing.T) {
	cases := []struct {
		name, sql, want string
	}{
		{"sqlcommenter", `SELECT 1 /*device_id='d-1',end_user='dr.smith',traceparent='00-abc-01'*/`, "device_id=d-1 end_user=dr.smith traceparent=00-abc-01"},
		{"percent-encoded key and value", `SELECT 1 /*loc%61tion='ward%203'*/`, "location=ward 3"},
		{"escaped quote", `SELECT 1 /*note='it\'s'*/`, "note=it's"},
		{"two comments", `/*a='1'*/ SELECT 1 /*b='2'*/`, "a=1 b=2"},
		{"a comment that is prose adds nothing", `SELECT 1 /* fetch the patient */`, ""},
		{"a broken tag list adds nothing of that comment", `SELECT 1 /*a='1',b=2*/ /*c='3'*/`, "c=3"},
		{"unterminated value", `SELECT 1 /*a='1*/`, ""},
		{"inside a literal", `SELECT '/*a=''1''*/'`, ""},
		{"line comment", "SELECT 1 -- a='1'\n", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, tg := range commentTags(tc.sql) {
				got = append(got, tg.Key+"="+tg.Value)
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Fatalf("commentTags(%q) = %q, want %q", tc.sql, g, tc.want)
			}
		})
	}
}

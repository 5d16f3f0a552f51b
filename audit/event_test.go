package audit

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// The hand-written encoder writes what encoding/json writes for the same
// event, for every kind of string a field can hold; Parse reads it back.
func TestCanonicalMatchesEncodingJSON(t *testing.T) {
	rows := int64(-1)
	clean := false
	strs := []string{"", "plain", `quote " and \ backslash`, "tab\tnew\nline\r", "ctl \x01\x1f\x7f", "<html>&amp;",
		"ünïcödé ✓", "bad utf8 \xff\xfe", "sep \u2028 \u2029", "emoji 😀"}
	for _, s := range strs {
		ev := Event{V: 1, Seq: 7, TS: s, Instance: s, Session: s, DBUser: s, Roles: []string{s, "b"}, EndUser: s, Application: s,
			Client: s, Database: s, TLS: true, Action: s, Relations: []string{s}, Columns: nil, Decision: s, Reason: s,
			Fingerprint: s, Query: s, Rows: &rows, Error: s, Role: s, Context: map[string]string{"z": s, "a": s}, Protocol: s,
			Ref: 3, Clean: &clean, Detail: s, Signature: s, KeyID: 9, Prev: ZeroHash}
		got := ev.appendCanonical(nil)
		c := ev
		if c.Roles == nil {
			c.Roles = []string{}
		}
		c.Columns = []string{}
		c.Hash = ""
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(&c); err != nil {
			t.Fatal(err)
		}
		want := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if !bytes.Equal(got, want) {
			t.Fatalf("%q:\n got %s\nwant %s", s, got, want)
		}
		line, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(line)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if back.Hash != ev.Hash || back.Query != c.Query && utf8.ValidString(s) {
			t.Fatalf("%q: read back %+v", s, back)
		}
	}
}

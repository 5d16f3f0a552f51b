package crypto

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

func TestIsEnvelope(t *testing.T) {
	valid := append([]byte("PH\x01\x01\x00\x00\x00\x2a"), bytes.Repeat([]byte{7}, 16)...)
	tests := []struct {
		name string
		in   []byte
		want bool
	}{
		{"nil is not an envelope", nil, false},
		{"the bare header is not an envelope", []byte("PH\x01"), false},
		{"a header, prefix and 16-byte payload is an envelope", valid, true},
		{"one byte shorter is not", valid[:len(valid)-1], false},
		{"version 2 is not version 1", append([]byte("PH\x02"), valid[3:]...), false},
		{"lower-case ph is not the header", append([]byte("ph\x01"), valid[3:]...), false},
		{"a raw-prefix Tink output is refused", append([]byte("PH\x01\x00"), valid[4:]...), false},
		{"text that starts with PH is not", []byte("PHONE NUMBER 555-0100 and more text"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsEnvelope(tt.in); got != tt.want {
				t.Errorf("IsEnvelope(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestHasEnvelopeHeader(t *testing.T) {
	for in, want := range map[string]bool{"": false, "PH": false, "PH\x01": true, "PH\x01x": true, "PH\x00": false} {
		if got := HasEnvelopeHeader([]byte(in)); got != want {
			t.Errorf("HasEnvelopeHeader(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestIsTextEnvelope(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{`\x504801`, true},
		{`\x5048010123456789abcdef`, true},
		{`\x504801` + strings.Repeat("ff", 40), true},
		{`\X504801AB`, true},
		{`\x50480102`, true},
		{`\x504802`, false},
		{`\x5048`, false},
		{`x504801`, false},
		{`\\x504801`, false},
		{`"\x504801"`, false},
		{``, false},
		{`PH`, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := IsTextEnvelope([]byte(tt.in)); got != tt.want {
				t.Errorf("IsTextEnvelope(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestEnvelopeKeyIDAndKeyPrefix(t *testing.T) {
	env := append(KeyPrefix(0xdeadbeef), bytes.Repeat([]byte{1}, 16)...)
	if !bytes.Equal(env[:8], []byte{'P', 'H', 1, 1, 0xde, 0xad, 0xbe, 0xef}) {
		t.Fatalf("KeyPrefix = % x", env[:8])
	}
	id, ok := EnvelopeKeyID(env)
	if !ok || id != 0xdeadbeef {
		t.Fatalf("EnvelopeKeyID = %d, %v", id, ok)
	}
	if _, ok := EnvelopeKeyID(env[:10]); ok {
		t.Fatal("EnvelopeKeyID accepted a short value")
	}
}

func TestRefFileNameRoundTrip(t *testing.T) {
	tests := []struct {
		ref  Ref
		want string
	}{
		{ColumnKey("public.patients.ssn"), "column.public.patients.ssn.json"},
		{ColumnKey("visit notes/v1"), "column.visit%20notes%2Fv1.json"},
		{ColumnKey("../../etc/passwd"), "column.%2E.%2F..%2Fetc%2Fpasswd.json"},
		{ColumnKey("Ärzte.bericht"), "column.%C3%84rzte.bericht.json"},
		{SigningKey(), "audit-signing.audit-signing.json"},
	}
	for _, tt := range tests {
		t.Run(tt.ref.Name(), func(t *testing.T) {
			got := tt.ref.fileName()
			if got != tt.want {
				t.Fatalf("fileName = %q, want %q", got, tt.want)
			}
			if strings.ContainsRune(got, '/') {
				t.Fatalf("file name %q has a slash", got)
			}
			back, ok := refFromFileName(got)
			if !ok || back != tt.ref {
				t.Fatalf("refFromFileName(%q) = %v, %v", got, back, ok)
			}
		})
	}
	for _, other := range []string{".lock", "column..json", "column.x.json.tmp-123", "kek.json", "column.%zz.json", "column.a%2.json"} {
		if r, ok := refFromFileName(other); ok {
			t.Errorf("refFromFileName(%q) = %v, want no keyset", other, r)
		}
	}
}

// TestHeaderForms pins the contract (DESIGN §4: "PH", version 1) and
// checks that every spelling of the header is derived from the one
// definition.
func TestHeaderForms(t *testing.T) {
	if EnvelopeHeader != "\x50\x48\x01" || HeaderLen != 3 {
		t.Fatalf("EnvelopeHeader = %q: the envelope format is a contract", EnvelopeHeader)
	}
	for name, got := range map[string]string{
		"text prefix": textEnvelopePrefix, "hex anchor": string(anchorHex), "base64 anchor": string(anchorBase64), "raw anchor": string(anchorRaw),
	} {
		want := map[string]string{"text prefix": `\x504801`, "hex anchor": "504801", "base64 anchor": "UEgB", "raw anchor": "PH"}[name]
		if got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	env := append(KeyPrefix(7), make([]byte, minTinkPayload)...)
	if !IsEnvelope(env) || !HasEnvelopeHeader(env) || !IsTextEnvelope([]byte(`\x`+hex.EncodeToString(env))) {
		t.Error("an envelope made from EnvelopeHeader is not recognised")
	}
	if sql := EnvelopeCheckSQL(Column{Schema: "s", Table: "t", Name: "c"}); !strings.Contains(sql, `LIKE E'\\x`+hex.EncodeToString([]byte(EnvelopeHeader))+`25'::bytea`) {
		t.Errorf("the CHECK constraint does not test EnvelopeHeader: %s", sql)
	}
}

package pgerr

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorIsFoundThroughWrapping(t *testing.T) {
	base := New(FeatureNotSupported, `column "ssn" of relation "public.patients" is encrypted`).WithHint("compare with = instead")
	wrapped := fmt.Errorf("planning: %w", base)
	got := As(wrapped)
	if got == nil {
		t.Fatal("As did not find the error through %w")
	}
	if got.Code != FeatureNotSupported || got.Code.String() != "0A000" || got.Code.Class() != "0A" {
		t.Fatalf("code = %v", got.Code)
	}
	if got.Hint != "compare with = instead" {
		t.Fatalf("hint = %q", got.Hint)
	}
	if CodeOf(errors.New("plain")) != Internal {
		t.Fatal("an error without SQLSTATE must map to XX000")
	}
}

func TestWithCopiesDoNotMutate(t *testing.T) {
	a := New(InsufficientPrivilege, "denied")
	b := a.WithHint("h").WithDetail("d").WithPosition(3)
	if a.Hint != "" || a.Detail != "" || a.Position != 0 {
		t.Fatal("With* mutated the receiver")
	}
	if b.Hint != "h" || b.Detail != "d" || b.Position != 3 {
		t.Fatalf("b = %+v", b)
	}
}

func TestMakeCodeRejectsMalformed(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("MakeCode accepted a 3-character code")
		}
	}()
	MakeCode("123")
}

func TestParseCode(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"42P01", true},
		{"XX000", true},
		{"00000", true},
		{"", false},
		{"4260", false},
		{"42P011", false},
		{"42p01", false},
		{"42P0\x00", false},
		{"42 01", false},
		{"4é01", false},
	} {
		c, ok := ParseCode(tc.in)
		if ok != tc.ok {
			t.Errorf("ParseCode(%q) ok = %v, want %v", tc.in, ok, tc.ok)
			continue
		}
		if ok && c.String() != tc.in {
			t.Errorf("ParseCode(%q) = %q", tc.in, c)
		}
		if !ok && c != (Code{}) {
			t.Errorf("ParseCode(%q) returned %q on failure", tc.in, c)
		}
	}
}

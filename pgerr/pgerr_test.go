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

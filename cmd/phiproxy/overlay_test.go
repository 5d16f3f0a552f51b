package main

import (
	"context"
	"testing"
)

func TestOverlayUsage(t *testing.T) {
	env := wantUsageErrors(t, runOverlay, nil, []string{"nope"}, []string{"install"}, []string{"status", "--config"},
		[]string{"status", "--config", "x.yaml", "extra"}, []string{"install", "--config", "/nonexistent.yaml"})
	if err := runOverlay(context.Background(), env, []string{"--help"}); err != nil {
		t.Errorf("--help: %v", err)
	}
}

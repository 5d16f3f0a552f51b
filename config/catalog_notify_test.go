package config

import (
	"strings"
	"testing"
	"time"
)

func TestCatalogRefreshInterval(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want time.Duration
		err  string
	}{
		{"", DefaultCatalogRefreshInterval, ""},
		{"catalog: {refresh_interval: 5s}\n", 5 * time.Second, ""},
		{"catalog: {refresh_interval: 0s}\n", 0, ""},
		{"catalog: {refresh_interval: -1s}\n", 0, "catalog.refresh_interval"},
		{"catalog: {refresh_interval: soon}\n", 0, "catalog.refresh_interval"},
	} {
		cfg, err := Parse([]byte(minimal+tc.doc), "")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want an error naming %s", tc.doc, err, tc.err)
			}
			continue
		}
		if err != nil || cfg.Catalog.RefreshInterval != tc.want {
			t.Errorf("%q: got %v, %v; want %v", tc.doc, cfg.Catalog.RefreshInterval, err, tc.want)
		}
	}
}

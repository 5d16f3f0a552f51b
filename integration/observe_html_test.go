package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// observeScreenshot renders the HTML report of cfg in headless Chromium
// (Debian's chromium): the page it lays out has the summary and the top
// refusal, and a screenshot is taken (kept in OBSERVE_SCREENSHOT when
// set, for a person to look at).
func observeScreenshot(t *testing.T, cfg string) {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the HTML report is checked in Debian's chromium (apt-get install chromium): %v", err)
	}
	page, _ := runReport(t, cfg, "html")
	dir := t.TempDir()
	html := filepath.Join(dir, "report.html")
	if err := os.WriteFile(html, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	png := filepath.Join(dir, "report.png")
	if s := os.Getenv("OBSERVE_SCREENSHOT"); s != "" {
		png = s
	}
	chromium := func(args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + filepath.Join(dir, "profile")}
		cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, errb.String())
		}
		return out.Bytes()
	}
	// The DOM Chromium built: summary cards, the headline and the
	// refusals table, the most frequent refusal first.
	dom := string(chromium("--dump-dom", "file://"+html))
	for _, want := range []string{`id="headline"`, "would be refused once enforced", `id="refused"`, "ciphertext has no order", "0A000"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	chromium("--window-size=1280,1600", "--screenshot="+png, "file://"+html)
	b, err := os.ReadFile(png)
	if err != nil || len(b) < 10000 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s: %d bytes, %v", png, len(b), err)
	}
}

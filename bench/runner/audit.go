package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// The audit comparison: the phi target once per audit mode (-audit
// off,best_effort,strict), each its own proxy with its own trail, in one
// run. Each phi proxy has an admin listener: the runner reads the trail's
// counters around every pgbench run for the batch sizes and fsync times.

// auditTarget names the phi target of an audit mode: "phi" for strict
// (the default, as in the main table), "phi-<mode>" otherwise.
func auditTarget(mode string) string {
	if mode == "strict" {
		return "phi"
	}
	return "phi-" + mode
}

// auditOptions are the audit: and admin: lines of a phi target's config
// for audit mode (the trail in dir/audit, on the disk the cluster uses)
// and the admin API's base URL and token.
func auditOptions(dir, mode string) (lines []string, base, token string, err error) {
	if mode == "" {
		mode = "strict"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", "", err
	}
	port, err := pgcluster.FreePort()
	if err != nil {
		return nil, "", "", err
	}
	b := make([]byte, 16)
	rand.Read(b)
	token = hex.EncodeToString(b)
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte(token+"\n"), 0o600); err != nil {
		return nil, "", "", err
	}
	lines = []string{
		"audit: {mode: " + mode + "}",
		fmt.Sprintf("admin: {listen: 127.0.0.1:%d, token_file: admin.token}", port),
	}
	return lines, fmt.Sprintf("http://127.0.0.1:%d", port), token, nil
}

// scrapeAudit reads events, batches and fsync seconds from t's metrics
// (zeros without a trail).
func scrapeAudit(t target) [3]float64 {
	if t.admin == "" {
		return [3]float64{}
	}
	m := scrapeMetrics(t, "phiproxy_audit_events_total", "phiproxy_audit_batches_total", "phiproxy_audit_fsync_seconds_total")
	return [3]float64{m[0], m[1], m[2]}
}

// scrapeMetrics reads the named samples from t's metrics (0 if absent).
func scrapeMetrics(t target, names ...string) []float64 {
	out := make([]float64, len(names))
	req, _ := http.NewRequest("GET", t.admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+t.token)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		for i, n := range names {
			if f[0] == n {
				out[i], _ = strconv.ParseFloat(f[1], 64)
			}
		}
	}
	return out
}

// auditTable prints TPS per audit mode, the ratios to audit off, and the
// group commits (events per batch, mean fsync) of the modes with a trail.
func auditTable(results map[string]result, auditModes, modes, clients []string) error {
	if len(auditModes) < 2 {
		return nil
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprint(tw, "mode\tclients\t")
	for _, a := range auditModes {
		fmt.Fprintf(tw, "%s TPS\t", a)
	}
	for _, a := range auditModes {
		if a != "off" {
			fmt.Fprintf(tw, "%s/off\t", a)
		}
	}
	for _, a := range auditModes {
		if a != "off" {
			fmt.Fprintf(tw, "%s events/batch\t%s fsync ms\t", a, a)
		}
	}
	fmt.Fprintln(tw)
	for _, m := range modes {
		for _, cl := range clients {
			fmt.Fprintf(tw, "%s\t%s\t", m, cl)
			off := results[cellKey(auditTarget("off"), m, cl)]
			for _, a := range auditModes {
				fmt.Fprintf(tw, "%.0f\t", results[cellKey(auditTarget(a), m, cl)].tps)
			}
			for _, a := range auditModes {
				if a != "off" {
					fmt.Fprintf(tw, "%.2f\t", results[cellKey(auditTarget(a), m, cl)].tps/off.tps)
				}
			}
			for _, a := range auditModes {
				if a == "off" {
					continue
				}
				r := results[cellKey(auditTarget(a), m, cl)]
				perBatch, fsync := 0.0, 0.0
				if r.auditBatches > 0 {
					perBatch, fsync = r.auditEvents/r.auditBatches, r.auditFsync/r.auditBatches*1000
				}
				fmt.Fprintf(tw, "%.1f\t%.3f\t", perBatch, fsync)
			}
			fmt.Fprintln(tw)
		}
	}
	return tw.Flush()
}

// copyKeys copies the KEK and the keysets of one proxy's directory into
// another's.
func copyKeys(from, to string) error {
	if err := os.MkdirAll(filepath.Join(to, "keys"), 0o700); err != nil {
		return err
	}
	files := []string{"kek.json"}
	ents, err := os.ReadDir(filepath.Join(from, "keys"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		files = append(files, filepath.Join("keys", e.Name()))
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

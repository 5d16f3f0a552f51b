package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/phiproxy/phiproxy/audit"
)

// `phiproxy serve` with audit.kafka ships every line of its trail to
// Kafka (franz-go's in-process cluster), byte for byte, keyed by the
// instance, in order.
func TestServeExportsTheTrailToKafka(t *testing.T) {
	f := phiFixture(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "phi-audit"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	p := startProxy(t, proxyOpts{catalogDB: phiDB, extra: f.extra +
		fmt.Sprintf("audit: {instance: px-kafka, kafka: {brokers: [%s], topic: phi-audit}}\n", strings.Join(brokers, ", "))})
	dsn := appDSN(p.addr(), phiDB)
	for _, q := range []string{
		"INSERT INTO patients (id, name, ssn) VALUES (1, 'k', 'KAFKA-CANARY-SSN')",
		"SELECT ssn FROM patients WHERE ssn = 'KAFKA-CANARY-SSN'",
	} {
		if out, err := psql(t, dsn, "-c", q); err != nil {
			t.Fatalf("%s: %v\n%s", q, err, out)
		}
	}
	dir := filepath.Join(filepath.Dir(p.config), "audit")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("phi-audit"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got [][]byte
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) != "px-kafka" {
				t.Errorf("record key %q", r.Key)
			}
			got = append(got, r.Value)
		})
		if n := countReads(got); n >= 1 {
			break
		}
	}
	segs, err := audit.Segments(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(segs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	if len(got) == 0 || len(got) > len(lines) {
		t.Fatalf("%d records in Kafka, %d lines in the trail", len(got), len(lines))
	}
	for i, v := range got {
		if !bytes.Equal(v, lines[i]) {
			t.Fatalf("record %d differs from line %d of the trail:\n%s\n%s", i, i+1, v, lines[i])
		}
		if bytes.Contains(v, []byte("KAFKA-CANARY")) {
			t.Fatalf("a planted value in Kafka: %s", v)
		}
	}
}

func countReads(vals [][]byte) int {
	n := 0
	for _, v := range vals {
		if bytes.Contains(v, []byte(`"action":"read"`)) {
			n++
		}
	}
	return n
}

package audit

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgcluster"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// exportFew exports 5 events to c with cfg and checks them, consuming
// with opts.
func exportFew(t *testing.T, c *kfake.Cluster, cfg *config.AuditKafka, opts ...kgo.Opt) {
	t.Helper()
	w := newSpoolWriter(t, filepath.Join(t.TempDir(), "audit"), "px-1")
	w.write(5)
	log, _ := testLogger(t)
	e, err := NewExporter(cfg, w.dir, t.TempDir(), "px-1", w.Durable, w.notify, log)
	if err != nil {
		t.Fatal(err)
	}
	runExporter(t, e)
	waitFor(t, "5 events exported", 30*time.Second, func() bool { return e.Exported() == 5 })
	checkExported(t, consume(t, c.ListenAddrs(), 5, opts...), w.Lines(), "px-1")
}

func TestExportSCRAM(t *testing.T) {
	c := newCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "audit", "correct horse"))
	cfg := kafkaConfig(c, 100)
	cfg.SASL = &config.AuditKafkaSASL{Mechanism: "scram-sha-256", Username: "audit",
		PasswordFile: writeFile(t, filepath.Join(t.TempDir(), "pw"), "correct horse\n", 0o600)}
	exportFew(t, c, cfg, kgo.SASL(scram.Auth{User: "audit", Pass: "correct horse"}.AsSha256Mechanism()))
}

func TestExportTLSAndPlain(t *testing.T) {
	dir := t.TempDir()
	ca, err := pgcluster.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue("kafka.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser("PLAIN", "audit", "correct horse"))
	cfg := kafkaConfig(c, 100)
	cfg.TLS = &config.AuditKafkaTLS{CA: ca.CertFile, ServerName: "kafka.test"}
	cfg.SASL = &config.AuditKafkaSASL{Mechanism: "plain", Username: "audit",
		PasswordFile: writeFile(t, filepath.Join(dir, "pw"), "correct horse", 0o600)}
	exportFew(t, c, cfg, kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool(), ServerName: "kafka.test", MinVersion: tls.VersionTLS12}),
		kgo.SASL(plain.Auth{User: "audit", Pass: "correct horse"}.AsMechanism()))
}

func TestKafkaOptionsRefuse(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, filepath.Join(dir, "good"), "pw", 0o600)
	tlsOn := &config.AuditKafkaTLS{}
	for _, tc := range []struct {
		name string
		tls  *config.AuditKafkaTLS
		sasl *config.AuditKafkaSASL
		want string
	}{
		{"a password file others can read", tlsOn, &config.AuditKafkaSASL{Mechanism: "scram-sha-512", Username: "u", PasswordFile: writeFile(t, filepath.Join(dir, "open"), "pw", 0o644)}, "run chmod 600"},
		{"a password file of the group", tlsOn, &config.AuditKafkaSASL{Mechanism: "scram-sha-512", Username: "u", PasswordFile: writeFile(t, filepath.Join(dir, "group"), "pw", 0o640)}, "has mode 0640"},
		{"an empty password file", tlsOn, &config.AuditKafkaSASL{Mechanism: "scram-sha-512", Username: "u", PasswordFile: writeFile(t, filepath.Join(dir, "empty"), "\n", 0o600)}, "is empty"},
		{"a missing password file", tlsOn, &config.AuditKafkaSASL{Mechanism: "scram-sha-512", Username: "u", PasswordFile: filepath.Join(dir, "none")}, "no such file"},
		{"plain without TLS", nil, &config.AuditKafkaSASL{Mechanism: "plain", Username: "u", PasswordFile: good}, "sends the password in clear"},
		{"a CA file without a certificate", &config.AuditKafkaTLS{CA: good}, nil, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.AuditKafka{Brokers: []string{"127.0.0.1:1"}, Topic: testTopic, MaxBacklog: 1, TLS: tc.tls, SASL: tc.sasl}
			_, err := kafkaOptions(cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("kafkaOptions: %v; want an error with %q", err, tc.want)
			}
		})
	}
}

package audit

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/atomicfile"
	"github.com/phiproxy/phiproxy/internal/certpool"
)

// exportLinger is how long the producer waits to fill a batch: the
// exporter already hands it whole batches, so it is short.
const exportLinger = 5 * time.Millisecond

// kafkaOptions are the franz-go client options of cfg: an idempotent
// producer (franz-go's default, never disabled here: it is what keeps
// order and avoids duplicates across retries) with acks=all, unlimited
// record retries and no delivery timeout (the spool is durable; the
// backlog bound is Admit's), TLS and SASL.
func kafkaOptions(cfg *config.AuditKafka, log *slog.Logger) ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(exportLinger),
		kgo.WithLogger(&kgoLogger{log: log, last: map[string]time.Time{}}),
		kgo.ProducerOnDataLossDetected(func(topic string, partition int32) {
			log.Error("audit export: Kafka reports lost records (the broker lost acknowledged data); the trail files remain the record of truth", "topic", topic, "partition", partition)
		}),
	}
	if cfg.ClientID != "" {
		opts = append(opts, kgo.ClientID(cfg.ClientID))
	}
	if cfg.TLS != nil {
		tc, err := kafkaTLS(cfg.TLS)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	if s := cfg.SASL; s != nil {
		if s.Mechanism == "plain" && cfg.TLS == nil {
			return nil, errors.New("audit export: audit.kafka.sasl.mechanism plain sends the password in clear: configure audit.kafka.tls, or use scram-sha-256 or scram-sha-512")
		}
		pass, err := readPasswordFile(s.PasswordFile)
		if err != nil {
			return nil, err
		}
		var m sasl.Mechanism
		switch s.Mechanism {
		case "plain":
			m = plain.Auth{User: s.Username, Pass: pass}.AsMechanism()
		case "scram-sha-256":
			m = scram.Auth{User: s.Username, Pass: pass}.AsSha256Mechanism()
		case "scram-sha-512":
			m = scram.Auth{User: s.Username, Pass: pass}.AsSha512Mechanism()
		default:
			return nil, fmt.Errorf("audit export: audit.kafka.sasl.mechanism %q is not one of plain, scram-sha-256, scram-sha-512", s.Mechanism)
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

func kafkaTLS(c *config.AuditKafkaTLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CA != "" {
		pool, err := certpool.Load(c.CA)
		if err != nil {
			return nil, fmt.Errorf("audit export: audit.kafka.tls.ca: %w", err)
		}
		tc.RootCAs = pool
	}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("audit export: audit.kafka.tls cert and key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// readPasswordFile reads the SASL password, refusing a file that group
// or others can access, as the KEK file is refused.
func readPasswordFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("audit export: audit.kafka.sasl.password_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("audit export: audit.kafka.sasl.password_file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("audit export: audit.kafka.sasl.password_file %s has mode %04o: refusing a password that group or others can access; run chmod 600 %s", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("audit export: audit.kafka.sasl.password_file: %w", err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return "", fmt.Errorf("audit export: audit.kafka.sasl.password_file %s is empty", path)
	}
	return string(b), nil
}

// exportState is the state file: the last seq the brokers acknowledged
// and the hash of that line (a restart checks it against the trail).
type exportState struct {
	Topic    string `json:"topic"`
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`
	Hash     string `json:"hash"`
	TS       string `json:"ts"`
}

func stateFilePath(stateDir string) string { return filepath.Join(stateDir, StateFileName) }

// readExportState reads the state file; a missing one is the zero state
// (export from the trail's start).
func readExportState(path string) (exportState, error) {
	var st exportState
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("audit export: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return st, fmt.Errorf("audit export: state file %s: %v; move it away to export the trail from its start", path, err)
	}
	return st, nil
}

// writeExportState replaces the state file atomically (0600, fsynced,
// renamed, directory fsynced).
func writeExportState(path string, st exportState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// kgoLogger passes franz-go's warnings and errors (a refused connection,
// a TLS or SASL failure) to the log, each message at most once a minute:
// during an outage franz-go retries without end. franz-go logs brokers,
// requests and errors, never a record's value.
type kgoLogger struct {
	log  *slog.Logger
	mu   sync.Mutex
	last map[string]time.Time // by message; franz-go's messages are constants
}

func (l *kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l *kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	if level > kgo.LogLevelWarn {
		return
	}
	now := time.Now()
	l.mu.Lock()
	if t, ok := l.last[msg]; ok && now.Sub(t) < time.Minute {
		l.mu.Unlock()
		return
	}
	l.last[msg] = now
	l.mu.Unlock()
	lv := slog.LevelWarn
	if level == kgo.LogLevelError {
		lv = slog.LevelError
	}
	l.log.Log(context.Background(), lv, "audit export: kafka client: "+msg, keyvals...)
}

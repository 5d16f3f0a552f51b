package config

import (
	"fmt"
	"regexp"
	"time"
)

// Audit configures the audit trail (DESIGN §8; docs/audit.md).
type Audit struct {
	// Mode is strict (default: PHI is served only once its event is
	// durable), best_effort (events that cannot be written are counted
	// and logged, PHI keeps flowing) or off (no trail at all: only to
	// measure the trail's cost; serve warns at start and on each reload).
	Mode string
	// Instance names the instance in events: audit.instance, else the
	// top-level instance, else the host name.
	Instance string
	File     AuditFile
	Kafka    *AuditKafka
	// ContextTags are the sqlcommenter tag keys recorded under an event's
	// context (device_id, location, traceparent, ...). No other tag is
	// ever recorded: an application could put PHI in a comment.
	ContextTags []string
}

// Audit modes.
const (
	AuditStrict     = "strict"
	AuditBestEffort = "best_effort"
	AuditOff        = "off"
)

// AuditFile is the local hash-chained sink, also the spool Kafka is fed
// from.
type AuditFile struct {
	Dir string // absolute path
	// CheckpointEvery and CheckpointInterval: a signed checkpoint after
	// this many events, or this long after the last one if events came
	// since (and at clean shutdown).
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// MaxFileBytes rotates to a new file once a file passes this size.
	MaxFileBytes int64
}

// Defaults of the audit: section.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 60 * time.Second
	DefaultMaxFileBytes       = 64 << 20
	DefaultKafkaMaxBacklog    = 100000
	// MaxContextTagBytes bounds one context tag value in an event.
	MaxContextTagBytes = 256
)

// AuditKafka is the optional Kafka export, fed from the file spool.
type AuditKafka struct {
	Brokers []string
	Topic   string
	// MaxBacklog is how many events may wait unexported before new PHI
	// statements are refused (58030).
	MaxBacklog int64
	// ClientID is the Kafka client id (default phiproxy-<instance>).
	ClientID string
	TLS      *AuditKafkaTLS
	SASL     *AuditKafkaSASL
}

// AuditKafkaTLS is the TLS setting of the Kafka connection; absent means
// plaintext.
type AuditKafkaTLS struct {
	CA         string // absolute path; "" = system roots
	Cert, Key  string // absolute paths; client certificate (optional)
	ServerName string
}

// AuditKafkaSASL is SASL authentication for Kafka.
type AuditKafkaSASL struct {
	Mechanism    string // plain | scram-sha-256 | scram-sha-512
	Username     string
	PasswordFile string // absolute path, a 0600 file
}

type rawAudit struct {
	Mode     string `yaml:"mode"`
	Instance string `yaml:"instance"`
	File     *struct {
		Dir                string `yaml:"dir"`
		CheckpointEvery    int    `yaml:"checkpoint_every"`
		CheckpointInterval string `yaml:"checkpoint_interval"`
		MaxFileBytes       int64  `yaml:"max_file_bytes"`
	} `yaml:"file"`
	Kafka *struct {
		Brokers    []string `yaml:"brokers"`
		Topic      string   `yaml:"topic"`
		MaxBacklog int64    `yaml:"max_backlog"`
		ClientID   string   `yaml:"client_id"`
		TLS        *struct {
			CA         string `yaml:"ca"`
			Cert       string `yaml:"cert"`
			Key        string `yaml:"key"`
			ServerName string `yaml:"server_name"`
		} `yaml:"tls"`
		SASL *struct {
			Mechanism    string `yaml:"mechanism"`
			Username     string `yaml:"username"`
			PasswordFile string `yaml:"password_file"`
		} `yaml:"sasl"`
	} `yaml:"kafka"`
	ContextTags []string `yaml:"context_tags"`
}

var tagKey = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// audit validates the audit: section.
func (v *validator) audit(r *rawAudit, instance string, resolve func(string) string) Audit {
	a := Audit{Mode: AuditStrict, Instance: instance, File: AuditFile{
		Dir: resolve("audit"), CheckpointEvery: DefaultCheckpointEvery,
		CheckpointInterval: DefaultCheckpointInterval, MaxFileBytes: DefaultMaxFileBytes,
	}}
	if r == nil {
		return a
	}
	path := func(k ...string) []string { return append([]string{"audit"}, k...) }
	if r.Mode != "" {
		a.Mode = r.Mode
	}
	if a.Mode != AuditStrict && a.Mode != AuditBestEffort && a.Mode != AuditOff {
		v.errf(path("mode"), "audit.mode %q is not one of strict, best_effort, off", a.Mode)
	}
	if r.Instance != "" {
		a.Instance = r.Instance
	}
	if f := r.File; f != nil {
		if f.Dir != "" {
			a.File.Dir = resolve(f.Dir)
		}
		switch {
		case f.CheckpointEvery < 0:
			v.errf(path("file", "checkpoint_every"), "audit.file.checkpoint_every must be a positive number of events")
		case f.CheckpointEvery > 0:
			a.File.CheckpointEvery = f.CheckpointEvery
		}
		if f.CheckpointInterval != "" {
			d, err := time.ParseDuration(f.CheckpointInterval)
			if err != nil || d <= 0 {
				v.errf(path("file", "checkpoint_interval"), "audit.file.checkpoint_interval %q is not a positive duration such as 60s", f.CheckpointInterval)
			} else {
				a.File.CheckpointInterval = d
			}
		}
		switch {
		case f.MaxFileBytes < 0 || f.MaxFileBytes > 0 && f.MaxFileBytes < 4096:
			v.errf(path("file", "max_file_bytes"), "audit.file.max_file_bytes must be at least 4096")
		case f.MaxFileBytes > 0:
			a.File.MaxFileBytes = f.MaxFileBytes
		}
	}
	for i, k := range r.ContextTags {
		if !tagKey.MatchString(k) {
			v.errf(path("context_tags"), "audit.context_tags[%d] %q is not a sqlcommenter key (letters, digits, _ . -)", i, k)
		}
		if k == "end_user" {
			v.errf(path("context_tags"), "audit.context_tags: end_user is recorded as the event's end_user already")
		}
	}
	a.ContextTags = r.ContextTags
	if k := r.Kafka; k != nil {
		a.Kafka = &AuditKafka{Brokers: k.Brokers, Topic: k.Topic, MaxBacklog: DefaultKafkaMaxBacklog, ClientID: k.ClientID}
		if len(k.Brokers) == 0 {
			v.errf(path("kafka", "brokers"), "audit.kafka needs brokers: [host:port, ...]")
		}
		if k.Topic == "" {
			v.errf(path("kafka", "topic"), "audit.kafka needs a topic")
		}
		switch {
		case k.MaxBacklog < 0:
			v.errf(path("kafka", "max_backlog"), "audit.kafka.max_backlog must be a positive number of events")
		case k.MaxBacklog > 0:
			a.Kafka.MaxBacklog = k.MaxBacklog
		}
		if a.Kafka.ClientID == "" {
			a.Kafka.ClientID = "phiproxy-" + a.Instance
		}
		if t := k.TLS; t != nil {
			a.Kafka.TLS = &AuditKafkaTLS{ServerName: t.ServerName}
			for _, p := range []struct {
				src string
				dst *string
			}{{t.CA, &a.Kafka.TLS.CA}, {t.Cert, &a.Kafka.TLS.Cert}, {t.Key, &a.Kafka.TLS.Key}} {
				if p.src != "" {
					*p.dst = resolve(p.src)
				}
			}
			if (t.Cert == "") != (t.Key == "") {
				v.errf(path("kafka", "tls"), "audit.kafka.tls cert and key go together")
			}
		}
		if s := k.SASL; s != nil {
			a.Kafka.SASL = &AuditKafkaSASL{Mechanism: s.Mechanism, Username: s.Username}
			switch s.Mechanism {
			case "plain", "scram-sha-256", "scram-sha-512":
			default:
				v.errf(path("kafka", "sasl", "mechanism"), "audit.kafka.sasl.mechanism %q is not one of plain, scram-sha-256, scram-sha-512", s.Mechanism)
			}
			if s.Username == "" || s.PasswordFile == "" {
				v.errf(path("kafka", "sasl"), "audit.kafka.sasl needs username and password_file")
			} else {
				a.Kafka.SASL.PasswordFile = resolve(s.PasswordFile)
			}
		}
	}
	return a
}

// String describes the mode for logs.
func (a Audit) String() string {
	return fmt.Sprintf("audit %s in %s", a.Mode, a.File.Dir)
}

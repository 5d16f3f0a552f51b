package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Version is the event format version (the "v" field).
const Version = 1

// Actions (DESIGN §8). The statement actions are rewrite.Action's values;
// the rest are the trail's own events.
const (
	ActionRead         = "read"
	ActionWrite        = "write"
	ActionDelete       = "delete"
	ActionCopyIn       = "copy_in"
	ActionCopyOut      = "copy_out"
	ActionDenied       = "denied" // a refused statement whose action is unknown (it did not parse)
	ActionLockdown     = "lockdown"
	ActionKeyRotated   = "key_rotated"
	ActionKeyRetired   = "key_retired"
	ActionConfigLoaded = "config_loaded"
	// ActionConfigRejected: a reload whose config did not load; the
	// running one was kept (Detail says why).
	ActionConfigRejected = "config_rejected"
	// ActionCancel: a CancelRequest (Detail: forwarded, or its key named
	// no session).
	ActionCancel = "cancel"
	// ActionLogoff: the proxy ended an idle session (automatic logoff,
	// 57P05 or 25P03 in error).
	ActionLogoff     = "logoff"
	ActionStart      = "start"
	ActionStop       = "stop"
	ActionCheckpoint = "checkpoint"
	// ActionCompletion is the outcome (rows, error) of an event written
	// before its statement completed; Ref is that event's seq.
	ActionCompletion = "completion"
	// ActionEncrypt, ActionReencrypt and ActionDecrypt record what
	// `phiproxy encrypt`, `reencrypt` and `decrypt` did to a column.
	ActionEncrypt   = "encrypt"
	ActionReencrypt = "reencrypt"
	ActionDecrypt   = "decrypt"
	// ActionObserve: the first time an instance saw a statement shape on
	// a column in enforce: observe (forwarded unchanged); Reason says
	// whether enforcement would run or refuse it.
	ActionObserve = "observe"
)

// Decisions.
const (
	DecisionAllowed = "allowed"
	DecisionMasked  = "masked"
	DecisionDenied  = "denied"
)

// ZeroHash is the prev of a trail's first event.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// TimeFormat is the layout of ts: UTC, microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Event is one audit record. The JSON field names and their order are a
// contract (DESIGN §8); fields after Error extend it and are omitted when
// empty. Strings hold names, never values: Query is normalized (literals
// → $n), Error is a SQLSTATE, Context holds only allow-listed sqlcommenter
// tags, bounded in length.
type Event struct {
	V           int      `json:"v"`
	Seq         uint64   `json:"seq"`
	TS          string   `json:"ts"`
	Instance    string   `json:"instance"`
	Session     string   `json:"session"`
	DBUser      string   `json:"db_user"`
	Roles       []string `json:"roles"`
	EndUser     string   `json:"end_user"`
	Application string   `json:"application"`
	Client      string   `json:"client"`
	Database    string   `json:"database"`
	TLS         bool     `json:"tls"`
	Action      string   `json:"action"`
	Relations   []string `json:"relations"`
	Columns     []string `json:"columns"`
	Decision    string   `json:"decision"`
	Reason      string   `json:"reason"`
	Fingerprint string   `json:"fingerprint"`
	Query       string   `json:"query"`
	// Rows is null while the outcome is not known (it follows in a
	// completion record that names this event's seq in ref).
	Rows  *int64 `json:"rows"`
	Error string `json:"error"`

	// BreakGlass: plaintext served only through the session's
	// break-glass (the reason holds its text).
	BreakGlass bool `json:"break_glass,omitempty"`
	// Role is the current role (after SET ROLE) when it is not DBUser.
	Role string `json:"role,omitempty"`
	// Context holds the allow-listed sqlcommenter tags (audit.context_tags).
	Context map[string]string `json:"context,omitempty"`
	// Protocol is simple or extended for statement events.
	Protocol string `json:"protocol,omitempty"`
	// Ref is, in a completion record, the seq of the event it completes.
	Ref uint64 `json:"ref,omitempty"`
	// Clean is, in a start event, whether the previous run of the trail
	// ended with a clean stop (absent for a new trail).
	Clean *bool `json:"clean,omitempty"`
	// Detail is free text of the trail's own events (a reload's config
	// path, the reason of a lockdown, a rotated key's name); never PHI.
	Detail string `json:"detail,omitempty"`
	// Signature (base64 Tink Ed25519) and KeyID are set on checkpoints.
	Signature string `json:"signature,omitempty"`
	KeyID     uint32 `json:"key_id,omitempty"`

	Prev string `json:"prev"`
	Hash string `json:"hash,omitempty"`
}

// hashSuffixLen is len(`,"hash":"` + 64 hex + `"}`).
const hashSuffixLen = len(`,"hash":"`) + 64 + len(`"}`)

// Marshal returns the event's line (without the newline): its canonical
// bytes with the hash member appended, and sets e.Hash. e.Prev must be
// set.
func (e *Event) Marshal() ([]byte, error) {
	return e.AppendLine(nil)
}

// AppendLine appends the event's line to dst (see Marshal).
func (e *Event) AppendLine(dst []byte) ([]byte, error) { return e.appendLine(dst) }

// Canonical splits a line into its canonical bytes and the hash it
// claims. It fails when the line does not end in a hash member.
func Canonical(line []byte) (canon []byte, hash string, err error) {
	line = bytes.TrimRight(line, "\r\n")
	n := len(line)
	if n < hashSuffixLen+2 || !bytes.HasPrefix(line[n-hashSuffixLen:], []byte(`,"hash":"`)) || !bytes.HasSuffix(line, []byte(`"}`)) {
		return nil, "", errors.New("line does not end in a hash member")
	}
	hash = string(line[n-hashSuffixLen+len(`,"hash":"`) : n-2])
	canon = make([]byte, 0, n-hashSuffixLen+1)
	canon = append(canon, line[:n-hashSuffixLen]...)
	canon = append(canon, '}')
	return canon, hash, nil
}

// HashOf is the hex SHA-256 of canonical bytes.
func HashOf(canon []byte) string {
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:])
}

// Parse reads one line. It checks that the line is well formed and that
// its hash matches its canonical bytes (ErrHash otherwise); chain links
// (prev) are the reader's and verifier's business.
func Parse(line []byte) (*Event, error) {
	canon, hash, err := Canonical(line)
	if err != nil {
		return nil, err
	}
	var e Event
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("malformed event: %v", err)
	}
	e.Hash = hash
	if HashOf(canon) != hash {
		return &e, ErrHash
	}
	return &e, nil
}

// ErrHash: a line's hash does not match its content.
var ErrHash = errors.New("hash does not match the event's content")

// Time parses ts.
func (e *Event) Time() (time.Time, error) { return time.Parse(TimeFormat, e.TS) }

// FormatTime formats t as ts.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// Sign signs the checkpoint e (instance, seq and prev set) with s: it sets
// Signature and KeyID. The Trail's writer signs its checkpoints with it;
// so can a tool or a test that writes a trail of its own.
func (e *Event) Sign(s Signer) error {
	sig, err := s.Sign(CheckpointMessage(e.Instance, e.Seq, e.Prev))
	if err != nil {
		return err
	}
	e.Signature, e.KeyID = base64.StdEncoding.EncodeToString(sig), s.KeyID()
	return nil
}

// CheckpointMessage is what a checkpoint's signature signs: the instance,
// the checkpoint's seq and its prev (the hash of the event before it),
// which binds every event up to it.
func CheckpointMessage(instance string, seq uint64, prev string) []byte {
	return []byte("phiproxy-audit-checkpoint/v1\n" + instance + "\n" + strconv.FormatUint(seq, 10) + "\n" + prev)
}

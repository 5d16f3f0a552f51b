package observe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
)

// Verdicts of a Record.
const (
	// Works: enforcement would run the statement (rewritten).
	Works = "works"
	// Refused: enforcement would refuse it with SQLSTATE, Message, Hint.
	Refused = "refused"
)

// FileName is the coverage file's name in state_dir.
const FileName = "observe.json"

// Bounds of the coverage file: the records kept (further fingerprints
// are counted in File.Dropped), and the applications and users kept per
// record.
const (
	MaxRecords = 10000
	MaxNames   = 16
	maxText    = 4096
)

// Record is what observe mode knows of one statement shape
// (fingerprint). It holds names and normalized text only.
type Record struct {
	Fingerprint string `json:"fingerprint"`
	// Query is the normalized text (literals → $n).
	Query     string   `json:"query"`
	Action    string   `json:"action"`
	Relations []string `json:"relations,omitempty"`
	// Columns are the observed columns the statement touches
	// ("schema.table.column"); for a refusal, those it names.
	Columns []string `json:"columns"`
	Verdict string   `json:"verdict"`
	// How a working statement would be enforced: the columns of the
	// literals that would be encrypted (one entry per literal), the
	// parameters ("$2 public.patients.ssn") and the result columns
	// ("#1 public.patients.ssn", 1-based) that would be decrypted.
	Literals []string `json:"literals,omitempty"`
	Params   []string `json:"params,omitempty"`
	Results  []string `json:"results,omitempty"`
	// The refusal enforcement would give.
	SQLSTATE string `json:"sqlstate,omitempty"`
	Message  string `json:"message,omitempty"`
	Hint     string `json:"hint,omitempty"`

	Count        int64    `json:"count"`
	FirstSeen    string   `json:"first_seen"`
	LastSeen     string   `json:"last_seen"`
	Applications []string `json:"applications"`
	DBUsers      []string `json:"db_users"`
}

// File is the coverage file.
type File struct {
	Version int    `json:"version"`
	Written string `json:"written"`
	// Dropped counts statements of fingerprints beyond MaxRecords.
	Dropped int64    `json:"dropped,omitempty"`
	Records []Record `json:"records"`
}

// ReadFile reads a coverage file; a missing file is an empty File.
func ReadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &File{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("observe: %s: %w", path, err)
	}
	return &f, nil
}

// Store holds the records of a running proxy. Safe for concurrent use.
type Store struct {
	path string
	now  func() time.Time

	mu      sync.Mutex
	recs    map[string]*Record
	dropped int64
	dirty   bool
}

// Open loads the store kept at path (state_dir/observe.json), so that a
// restart keeps counting; now is the clock (nil: time.Now).
func Open(path string, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	f, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path, now: now, recs: map[string]*Record{}, dropped: f.Dropped}
	for i := range f.Records {
		r := f.Records[i]
		if r.Fingerprint != "" && len(s.recs) < MaxRecords {
			s.recs[r.Fingerprint] = &r
		}
	}
	return s, nil
}

// Path is the file the store is written to.
func (s *Store) Path() string { return s.path }

// Add counts one statement with plan verdict r (its Count, times and
// names are ignored) sent by application as user. It returns true the
// first time the fingerprint is seen, or when its verdict changed.
func (s *Store) Add(r Record, application, user string) bool {
	if r.Fingerprint == "" {
		return false
	}
	ts := s.now().UTC().Format(time.RFC3339)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirty = true
	cur, ok := s.recs[r.Fingerprint]
	if !ok {
		if len(s.recs) >= MaxRecords {
			s.dropped++
			return false
		}
		r.Query = bound(r.Query, maxText)
		r.Message, r.Hint = bound(r.Message, maxText), bound(r.Hint, maxText)
		r.Count, r.FirstSeen, r.Applications, r.DBUsers = 0, ts, nil, nil
		cur = &r
		s.recs[r.Fingerprint] = cur
	}
	changed := !ok || cur.Verdict != r.Verdict || cur.SQLSTATE != r.SQLSTATE
	if ok && changed {
		// The config or the schema changed: the latest plan is the verdict.
		keep := *cur
		*cur = r
		cur.Query = bound(r.Query, maxText)
		cur.Message, cur.Hint = bound(r.Message, maxText), bound(r.Hint, maxText)
		cur.Count, cur.FirstSeen, cur.Applications, cur.DBUsers = keep.Count, keep.FirstSeen, keep.Applications, keep.DBUsers
	}
	cur.Count++
	cur.LastSeen = ts
	cur.Applications = addName(cur.Applications, application)
	cur.DBUsers = addName(cur.DBUsers, user)
	return changed
}

func addName(list []string, n string) []string {
	if n == "" {
		n = "(none)"
	}
	n = bound(n, 128)
	i := sort.SearchStrings(list, n)
	if i < len(list) && list[i] == n || len(list) >= MaxNames {
		return list
	}
	return append(list[:i], append([]string{n}, list[i:]...)...)
}

// Snapshot returns the store's content as a File, records sorted by
// fingerprint.
func (s *Store) Snapshot() *File {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := &File{Version: 1, Written: s.now().UTC().Format(time.RFC3339), Dropped: s.dropped}
	for _, r := range s.recs {
		c := *r
		c.Applications = append([]string(nil), r.Applications...)
		c.DBUsers = append([]string(nil), r.DBUsers...)
		f.Records = append(f.Records, c)
	}
	sort.Slice(f.Records, func(i, j int) bool { return f.Records[i].Fingerprint < f.Records[j].Fingerprint })
	return f
}

// Flush writes the store to its file (atomically, 0600) if anything
// changed since the last Flush.
func (s *Store) Flush() error {
	s.mu.Lock()
	dirty := s.dirty
	s.dirty = false
	s.mu.Unlock()
	if !dirty {
		return nil
	}
	data, err := json.MarshalIndent(s.Snapshot(), "", " ")
	if err == nil {
		if err = os.MkdirAll(filepath.Dir(s.path), 0o700); err == nil {
			err = atomicfile.Write(s.path, append(data, '\n'), 0o600)
		}
	}
	if err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("observe: %w", err)
	}
	return nil
}

// bound cuts s to at most n bytes (on a UTF-8 boundary).
func bound(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

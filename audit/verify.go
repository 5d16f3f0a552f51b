package audit

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
)

// SignatureVerifier checks a checkpoint signature (*crypto.Verifier).
type SignatureVerifier interface {
	Verify(sig, data []byte) error
}

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// Verifier checks checkpoint signatures; nil skips them (the report
	// says so).
	Verifier SignatureVerifier
	// StateFile, if set, is the verifier's own memory of the last
	// checkpoint it verified (as transparency-log clients keep the last
	// tree head they saw): the trail must still hold that checkpoint with
	// the same hash. After a run without problems it is updated to the
	// trail's last checkpoint. A missing file is a first run.
	StateFile string
	// Head is the writer's head file (state_dir/audit-head.json): the
	// trail must reach its seq with its hash.
	Head *Head
	// Instance, if set, is the instance every checkpoint must name.
	Instance string
	// MaxProblems bounds the problems reported (default 20).
	MaxProblems int
	// Now is the clock of the state file (default time.Now).
	Now func() time.Time
}

// Problem is one place where the trail is not intact.
type Problem struct {
	// Seq is the seq where the trail goes wrong: the line's seq, or the
	// seq expected at that position when the line cannot be read.
	Seq  uint64
	File string // base name of the file; "" for problems of the whole trail
	Line int    // line in File, from 1; 0 for a whole file or the whole trail
	What string
}

func (p Problem) String() string {
	switch {
	case p.File == "":
		return fmt.Sprintf("seq %d: %s", p.Seq, p.What)
	case p.Line == 0:
		return fmt.Sprintf("seq %d (%s): %s", p.Seq, p.File, p.What)
	}
	return fmt.Sprintf("seq %d (%s line %d): %s", p.Seq, p.File, p.Line, p.What)
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Events      uint64 // lines read, checkpoints included
	Checkpoints uint64
	Files       int
	FirstSeq    uint64
	LastSeq     uint64
	LastHash    string
	// LastCheckpoint is the last checkpoint's seq (0: none); Unsealed
	// counts the events after it, which no signature covers yet (normal
	// while the proxy runs: the next checkpoint seals them).
	LastCheckpoint     uint64
	LastCheckpointHash string
	Unsealed           uint64
	SignaturesChecked  bool
	// Notes are facts worth showing that are not problems.
	Notes    []string
	Problems []Problem
	// Truncated: more problems were found than reported.
	Truncated bool
	// PartialTail: the trail's last line is incomplete. If the writer is
	// running this may be a write in progress: verifying again shortly
	// tells (the CLI does).
	PartialTail bool
}

// OK reports whether the trail is intact.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 }

// VerifyState is the content of a --state file.
type VerifyState struct {
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`  // the last verified checkpoint
	Hash     string `json:"hash"` // its hash
	File     string `json:"file"`
	Verified string `json:"verified"` // when (TimeFormat)
}

// ReadVerifyState reads a state file; a missing file is (nil, nil).
func ReadVerifyState(path string) (*VerifyState, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s VerifyState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: not a verify state file: %v", path, err)
	}
	if len(s.Hash) != 64 || s.Seq == 0 {
		return nil, fmt.Errorf("%s: not a verify state file (no checkpoint seq and hash)", path)
	}
	return &s, nil
}

// WriteVerifyState writes a state file (0600, through a rename).
func WriteVerifyState(path string, s *VerifyState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// anchor is a {seq, hash} the trail must hold (the state's checkpoint, the
// head file's).
type anchor struct {
	name      string
	seq       uint64
	hash      string
	found, ok bool
	state     bool // the state file's (it may anchor a pruned trail)
}

// verifier walks a trail once.
type verifier struct {
	opts VerifyOptions
	rep  *VerifyReport

	file     string // base name of the current file
	seg      Segment
	fileLine int // lines read in the current file

	started   bool
	nextSeq   uint64 // seq expected next
	prev      string // hash expected as the next prev; "" = unknown
	prevLine  int    // line of the previous event in file prevFile
	prevFile  string
	instance  string // instance of the current run (its start event)
	anchors   []*anchor
	ckFile    string // file of the last checkpoint
	sawLine   bool   // the current file has a line
	lastLast  bool   // the current file is the trail's last
	lastKinds [2]string
}

// Verify reads the trail's files segs (Segments) once, with flat memory,
// and checks that nothing was edited, removed, inserted, reordered or cut
// off: every line parses and its hash matches its content; seq counts up
// by one from 1 (prev of the first: ZeroHash) across files; each prev is
// the hash of the event before; each file's name is its first seq; every
// checkpoint's signature verifies; a completion refers to an earlier
// event; no line is cut short; the state file's checkpoint and the head
// file's seq are still in the trail with their hashes. The error is for
// I/O failures only; what is wrong with the trail is in the report.
func Verify(segs []Segment, opts VerifyOptions) (*VerifyReport, error) {
	if opts.MaxProblems <= 0 {
		opts.MaxProblems = 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	v := &verifier{opts: opts, rep: &VerifyReport{Files: len(segs), SignaturesChecked: opts.Verifier != nil}}
	var state *VerifyState
	if opts.StateFile != "" {
		s, err := ReadVerifyState(opts.StateFile)
		if err != nil {
			return nil, err
		}
		state = s
		if s != nil {
			v.anchors = append(v.anchors, &anchor{name: fmt.Sprintf("the checkpoint verified on %s (state file %s)", s.Verified, opts.StateFile), seq: s.Seq, hash: s.Hash, state: true})
		}
	}
	if opts.Head != nil {
		v.anchors = append(v.anchors, &anchor{name: fmt.Sprintf("the head file's checkpoint (written %s)", opts.Head.TS), seq: opts.Head.Seq, hash: opts.Head.Hash})
	}
	if len(segs) == 0 {
		v.problem(0, "", 0, "the trail has no files")
	}
	r := NewReader(segs)
	defer r.Close()
	cur := -1
	for r.Next() {
		l := r.Line()
		for cur < 0 || segs[cur].Path != l.File {
			cur++
			v.startFile(segs[cur], cur == len(segs)-1)
		}
		v.fileLine = l.No
		v.line(l, cur == len(segs)-1)
	}
	if err := r.Err(); err != nil {
		// A line too long to be an event is damage, not an I/O failure
		// (the error names the file).
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return nil, err
		}
		v.problem(v.nextSeq, "", 0, "%v", err)
	}
	for cur < len(segs)-1 { // trailing empty files
		cur++
		v.startFile(segs[cur], cur == len(segs)-1)
	}
	v.finish(state)
	if v.rep.OK() && opts.StateFile != "" && v.rep.LastCheckpoint != 0 &&
		(state == nil || v.rep.LastCheckpoint >= state.Seq) {
		ns := &VerifyState{Instance: v.instance, Seq: v.rep.LastCheckpoint, Hash: v.rep.LastCheckpointHash,
			File: v.ckFile, Verified: FormatTime(opts.Now())}
		if err := WriteVerifyState(opts.StateFile, ns); err != nil {
			return v.rep, fmt.Errorf("trail intact, but the state file was not updated: %v", err)
		}
	}
	return v.rep, nil
}

func (v *verifier) problem(seq uint64, file string, line int, format string, args ...any) {
	if len(v.rep.Problems) >= v.opts.MaxProblems {
		v.rep.Truncated = true
		return
	}
	v.rep.Problems = append(v.rep.Problems, Problem{Seq: seq, File: file, Line: line, What: fmt.Sprintf(format, args...)})
}

func (v *verifier) note(format string, args ...any) {
	v.rep.Notes = append(v.rep.Notes, fmt.Sprintf(format, args...))
}

// startFile moves to the next file of the trail.
func (v *verifier) startFile(seg Segment, last bool) {
	v.endFile()
	v.seg, v.file, v.sawLine, v.lastLast, v.fileLine = seg, filepath.Base(seg.Path), false, last, 0
}

// endFile checks the file just read was not empty: the writer creates a
// file with its first line, so an empty one is a file emptied behind its
// back (except a last file whose first write a crash cut short; the next
// start removes it).
func (v *verifier) endFile() {
	if v.file == "" || v.sawLine {
		return
	}
	switch {
	case !v.lastLast:
		v.problem(v.seg.First, v.file, 0, "the file is empty: its events were deleted")
	case v.started && v.seg.First != v.nextSeq:
		v.problem(v.seg.First, v.file, 0, "an empty last file named for seq %d, but the trail's next seq is %d", v.seg.First, v.nextSeq)
	}
}

// resync makes the chain continue from ev after a problem, so that one
// damaged line is reported once rather than on every line after it.
func (v *verifier) resync(seq uint64, hash string) {
	v.nextSeq, v.prev = seq+1, hash
	v.prevFile, v.prevLine = v.file, v.fileLine
}

func (v *verifier) line(l *Line, last bool) {
	v.sawLine = true
	v.rep.Events++
	expected := v.nextSeq
	if !v.started {
		expected = v.seg.First
	}
	if l.Partial {
		what := "the file's last line is incomplete (no newline)"
		if last {
			what = "the trail's last line is incomplete: it was cut off mid-line (truncated, or the writer crashed and has not restarted since)"
			v.rep.PartialTail = true
		}
		v.problem(expected, v.file, l.No, "%s", what)
		v.started = true
		v.resync(expected, "")
		return
	}
	ev, err := Parse(l.Bytes)
	if err != nil {
		v.started = true
		if errors.Is(err, ErrHash) {
			seq := expected
			if ev.Seq == expected {
				seq = ev.Seq
			}
			v.problem(seq, v.file, l.No, "the line's hash does not match its content: the line was edited")
			v.resync(seq, ev.Hash)
			return
		}
		v.problem(expected, v.file, l.No, "malformed line: %v", err)
		v.resync(expected, "")
		return
	}
	v.rep.LastSeq, v.rep.LastHash = ev.Seq, ev.Hash
	if l.No == 1 && ev.Seq != v.seg.First {
		v.problem(ev.Seq, v.file, l.No, "the file's name says it starts at seq %d but its first event is seq %d (a renamed or rewritten file)", v.seg.First, ev.Seq)
	}
	switch {
	case !v.started:
		v.started = true
		v.rep.FirstSeq = ev.Seq
		v.first(ev, l)
	case ev.Seq > expected && l.No == 1:
		v.problem(expected, v.file, l.No, "seq jumps from %d to %d at the start of this file: the file holding %s is missing", expected-1, ev.Seq, span(expected, ev.Seq-1))
	case ev.Seq > expected:
		v.problem(expected, v.file, l.No, "seq jumps from %d to %d: %s (lines deleted)", expected-1, ev.Seq, missing(expected, ev.Seq-1))
	case ev.Seq < expected:
		v.problem(ev.Seq, v.file, l.No, "seq %d comes after seq %d: lines were reordered or duplicated", ev.Seq, expected-1)
	case v.prev != "" && ev.Prev != v.prev:
		v.problem(ev.Seq, v.file, l.No, "prev does not match the hash of seq %d (%s line %d): seq %d or seq %d was edited and re-hashed, or a line replaced",
			ev.Seq-1, v.prevFile, v.prevLine, ev.Seq-1, ev.Seq)
	}
	if ev.Action == ActionStart || v.instance == "" {
		v.instance = ev.Instance
	}
	switch ev.Action {
	case ActionCheckpoint:
		v.checkpoint(ev, l)
	case ActionCompletion:
		if ev.Ref == 0 || ev.Ref >= ev.Seq || ev.Ref < v.rep.FirstSeq {
			v.problem(ev.Seq, v.file, l.No, "a completion refers to seq %d, which is not an earlier event of the trail", ev.Ref)
		}
	}
	for _, a := range v.anchors {
		if a.seq == ev.Seq {
			a.found = true
			a.ok = ev.Hash == a.hash
			if !a.ok {
				v.problem(ev.Seq, v.file, l.No, "the hash of seq %d differs from %s: the trail was rewritten", ev.Seq, a.name)
			}
		}
	}
	v.lastKinds = [2]string{v.lastKinds[1], ev.Action}
	v.resync(ev.Seq, ev.Hash)
}

// first checks where the trail starts: seq 1 with a zero prev, unless the
// files before were removed (retention) and the state file anchors what
// remains.
func (v *verifier) first(ev *Event, l *Line) {
	if ev.Seq == 1 {
		if ev.Prev != ZeroHash {
			v.problem(1, v.file, l.No, "the trail's first event has a prev (%.12s…), not zeros: files before it are missing", ev.Prev)
		}
		return
	}
	for _, a := range v.anchors {
		if a.state && a.seq >= ev.Seq {
			v.note("the trail starts at seq %d: earlier files were removed; what remains is anchored by %s (seq %d)", ev.Seq, a.name, a.seq)
			return
		}
	}
	v.problem(ev.Seq, v.file, l.No, "the trail starts at seq %d, not 1: the files before it are missing (a --state file from a verification before they were removed would anchor it)", ev.Seq)
}

func (v *verifier) checkpoint(ev *Event, l *Line) {
	v.rep.Checkpoints++
	ok := true
	if ev.Instance != v.instance {
		v.problem(ev.Seq, v.file, l.No, "the checkpoint names instance %q, the run it seals is %q's", ev.Instance, v.instance)
		ok = false
	}
	if v.opts.Instance != "" && ev.Instance != v.opts.Instance {
		v.problem(ev.Seq, v.file, l.No, "the checkpoint names instance %q, not %q", ev.Instance, v.opts.Instance)
		ok = false
	}
	if v.opts.Verifier != nil {
		sig, err := base64.StdEncoding.DecodeString(ev.Signature)
		switch {
		case ev.Signature == "":
			v.problem(ev.Seq, v.file, l.No, "the checkpoint has no signature")
			ok = false
		case err != nil:
			v.problem(ev.Seq, v.file, l.No, "the checkpoint's signature is not base64: %v", err)
			ok = false
		case len(sig) >= 5 && sig[0] == 1 && binary.BigEndian.Uint32(sig[1:5]) != ev.KeyID:
			v.problem(ev.Seq, v.file, l.No, "the checkpoint says key_id %d but was signed by key %d", ev.KeyID, binary.BigEndian.Uint32(sig[1:5]))
			ok = false
		default:
			if err := v.opts.Verifier.Verify(sig, CheckpointMessage(ev.Instance, ev.Seq, ev.Prev)); err != nil {
				v.problem(ev.Seq, v.file, l.No, "the checkpoint's signature does not verify with the public key: %v", err)
				ok = false
			}
		}
	}
	if ok {
		v.rep.LastCheckpoint, v.rep.LastCheckpointHash, v.ckFile = ev.Seq, ev.Hash, v.file
	}
}

// finish checks what only the end tells: the anchors were reached.
func (v *verifier) finish(state *VerifyState) {
	v.endFile()
	r := v.rep
	for _, a := range v.anchors {
		switch {
		case a.found:
		case !v.started || a.seq > r.LastSeq:
			v.problem(a.seq, "", 0, "the trail ends at seq %d but %s is seq %d: the trail was truncated or replaced by a shorter one", r.LastSeq, a.name, a.seq)
		case a.seq < r.FirstSeq:
			v.problem(a.seq, "", 0, "the trail starts at seq %d; %s (seq %d) is no longer in it", r.FirstSeq, a.name, a.seq)
		}
	}
	if !v.started {
		return
	}
	r.Unsealed = r.LastSeq - r.LastCheckpoint
	if r.LastCheckpoint == 0 {
		r.Unsealed = r.Events
	}
	switch {
	case r.Unsealed == 0 && v.lastKinds == [2]string{ActionStop, ActionCheckpoint}:
		v.note("the trail ends with a clean stop, sealed by a checkpoint")
	case r.Unsealed == 0:
		v.note("the trail ends with a checkpoint")
	default:
		what := fmt.Sprintf("%d events after the last checkpoint are", r.Unsealed)
		if r.Unsealed == 1 {
			what = "1 event after the last checkpoint is"
		}
		v.note("%s not sealed by a signature yet (the proxy is running, or did not stop cleanly)", what)
	}
	if state != nil && v.anchors[0].ok {
		v.note("the state file's checkpoint (seq %d, verified %s) is still in the trail", state.Seq, state.Verified)
	}
}

func span(a, b uint64) string {
	if a == b {
		return fmt.Sprintf("seq %d", a)
	}
	return fmt.Sprintf("seq %d..%d", a, b)
}

func missing(a, b uint64) string {
	if a == b {
		return span(a, b) + " is missing"
	}
	return span(a, b) + " are missing"
}

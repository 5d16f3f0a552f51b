package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
)

// spool follows a trail's files as the writer appends to them, for the
// Kafka export. Unlike Reader it does not stop at the end of the last
// file: it keeps its place (the file and the offset after the last
// complete line it returned) and reads on when the writer has made more
// lines durable, moving to the next file when the writer rotates. It
// lists the directory only when the current file is exhausted while
// durable lines remain, that is at a rotation, so a steady export does
// not rescan anything.
type spool struct {
	dir string
	log *slog.Logger

	seg  Segment // the current file (Path "" before the first one exists)
	f    *os.File
	br   *bufio.Reader
	off  int64  // offset in f after the last complete line read
	next uint64 // seq the next line should carry
	buf  []byte
}

// openSpool positions a spool on the line after seq after. When after > 0
// and hash is not empty, the line at seq after must have that hash: a
// different one means the trail is not the one the state was written for.
func openSpool(dir string, after uint64, hash string, log *slog.Logger) (_ *spool, err error) {
	s := &spool{dir: dir, log: log, next: after + 1}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	segs, err := Segments(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return s, nil // the writer creates it
		}
		return nil, err
	}
	if len(segs) == 0 {
		return s, nil
	}
	// The file holding seq after (so that its hash can be checked), or
	// the first file when it is gone.
	start := segs[0]
	for _, sg := range segs {
		if sg.First <= max(after, 1) {
			start = sg
		}
	}
	if start.First > after+1 {
		log.Error("audit export: the trail files holding the events after the last exported one are gone; the export continues with the oldest file left",
			"exported_seq", after, "file", start.Path, "first_seq", start.First)
	}
	if err := s.open(start); err != nil {
		return nil, err
	}
	if after == 0 || start.First > after {
		return s, nil
	}
	// Skip to seq after, check it, and keep the place after it.
	for {
		line, err := s.readLine()
		if err != nil {
			return nil, err
		}
		if line == nil {
			return nil, fmt.Errorf("audit export: the state says seq %d was exported, but %s ends before it: the trail in %s is not the one that was exported", after, s.seg.Path, dir)
		}
		seq, err := lineSeq(line)
		if err != nil {
			return nil, fmt.Errorf("audit export: %s line at offset %d: %v", s.seg.Path, s.off, err)
		}
		if seq < after {
			continue
		}
		if seq > after { // a gap: Next reports it
			if err := s.unread(line); err != nil {
				return nil, err
			}
			return s, nil
		}
		if hash != "" && lineHash(line) != hash {
			return nil, fmt.Errorf("audit export: the state says seq %d with hash %s was exported, but the trail's event %d in %s has another hash: the trail in %s is not the one that was exported", after, hash, seq, s.seg.Path, dir)
		}
		return s, nil
	}
}

func (s *spool) open(sg Segment) error {
	f, err := os.Open(sg.Path)
	if err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	s.close()
	s.seg, s.f, s.off = sg, f, 0
	if s.br == nil {
		s.br = bufio.NewReaderSize(f, 64<<10)
	} else {
		s.br.Reset(f)
	}
	return nil
}

func (s *spool) close() {
	if s != nil && s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// rewind drops what the reader buffered beyond the last line returned:
// bytes past what the writer had made durable may since have been cut
// back and written again. Call it before each sweep of Next.
func (s *spool) rewind() error {
	if s.f == nil {
		return nil
	}
	if _, err := s.f.Seek(s.off, io.SeekStart); err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	s.br.Reset(s.f)
	return nil
}

// unread puts the line readLine just returned back, to be read again
// later: its seq is beyond what the writer has made durable, and until it
// has, the bytes may still change (a write the writer cuts back).
func (s *spool) unread(line []byte) error {
	s.off -= int64(len(line) + 1)
	return s.rewind()
}

// readLine returns the next complete line of the current file (without
// its newline; valid until the next call), or nil at its end. A last
// line without its newline is being written: it is left for a later call.
func (s *spool) readLine() ([]byte, error) {
	if s.f == nil {
		return nil, nil
	}
	s.buf = s.buf[:0]
	if atZeros(s.br) {
		return nil, s.rewind() // the writer's zeroed space: wait for lines
	}
	for {
		chunk, err := s.br.ReadSlice('\n')
		s.buf = append(s.buf, chunk...)
		if len(s.buf) > MaxLineBytes {
			return nil, fmt.Errorf("audit export: %s: line longer than 1 MiB at offset %d", s.seg.Path, s.off)
		}
		switch err {
		case nil:
			s.off += int64(len(s.buf))
			return s.buf[:len(s.buf)-1], nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			if len(s.buf) > 0 {
				// Read it again once it is complete.
				return nil, s.rewind()
			}
			return nil, nil
		default:
			return nil, fmt.Errorf("audit export: %s: %w", s.seg.Path, err)
		}
	}
}

// Next returns the next line whose seq is at most limit and that seq, or
// nil when there is none yet. The line is valid until the next call.
// Only lines up to limit are consumed; call rewind before a sweep with a
// new limit.
func (s *spool) Next(limit uint64) ([]byte, uint64, error) {
	rotated := false
	for s.next <= limit {
		line, err := s.readLine()
		if err != nil {
			return nil, 0, err
		}
		if line == nil {
			// The current file is exhausted, yet the writer says more
			// lines are durable: it rotated (or the first file appeared).
			// Read the current file to its end once more after seeing
			// the next one: the writer does not write to a file after it
			// has started the next.
			if rotated {
				return nil, 0, nil
			}
			nextSeg, ok, err := s.nextSegment()
			if err != nil || !ok {
				return nil, 0, err
			}
			if line, err = s.readLine(); err != nil {
				return nil, 0, err
			}
			if line == nil {
				if s.f != nil {
					s.warnPartial()
				}
				if err := s.open(nextSeg); err != nil {
					return nil, 0, err
				}
				rotated = true
				continue
			}
		}
		seq, err := lineSeq(line)
		if err != nil {
			return nil, 0, fmt.Errorf("audit export: %s line ending at offset %d: %v", s.seg.Path, s.off, err)
		}
		switch {
		case seq < s.next:
			s.log.Warn("audit export: skipping a trail line whose seq is not after the last one", "file", s.seg.Path, "seq", seq, "expected", s.next)
			continue
		case seq > s.next:
			s.log.Error("audit export: the trail has a gap", "file", s.seg.Path, "seq", seq, "expected", s.next)
			s.next = seq
		}
		if seq > limit {
			return nil, 0, s.unread(line)
		}
		s.next = seq + 1
		return line, seq, nil
	}
	return nil, 0, nil
}

// warnPartial logs a partial line left at the end of a file the writer
// has moved on from (a write cut short that the writer's Open did not
// truncate away).
func (s *spool) warnPartial() {
	if fi, err := s.f.Stat(); err == nil && fi.Size() > s.off {
		s.log.Error("audit export: a trail file ends in a partial line; it is not exported", "file", s.seg.Path, "offset", s.off)
	}
}

// nextSegment is the file after the current one, if there is one yet.
func (s *spool) nextSegment() (Segment, bool, error) {
	segs, err := Segments(s.dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Segment{}, false, nil
		}
		return Segment{}, false, fmt.Errorf("audit export: %w", err)
	}
	for _, sg := range segs {
		if s.f == nil || sg.First > s.seg.First {
			return sg, true, nil
		}
	}
	return Segment{}, false, nil
}

// lineSeq reads the seq of a trail line from its prefix
// ({"v":N,"seq":N,...}, the contract's field order) without decoding the
// rest.
func lineSeq(line []byte) (uint64, error) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"v":`))
	if ok {
		i := 0
		for i < len(rest) && i < 8 && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		rest, ok = bytes.CutPrefix(rest[i:], []byte(`,"seq":`))
	}
	if !ok {
		return 0, errors.New(`line does not start with {"v":N,"seq":N`)
	}
	i := 0
	for i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil || i == len(rest) || rest[i] != ',' {
		return 0, errors.New("line has no valid seq")
	}
	return seq, nil
}

// lineHash is the hash a line claims (its last member), "" if none.
func lineHash(line []byte) string {
	_, hash, err := Canonical(line)
	if err != nil {
		return ""
	}
	return hash
}

package audit

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
)

// TailSegments returns the shortest suffix of segs that holds at least n
// lines (all of segs when they hold fewer): where `audit tail -n N`
// starts reading.
func TailSegments(segs []Segment, n int) ([]Segment, error) {
	have := 0
	for i := len(segs) - 1; i >= 0; i-- {
		c, err := countFileLines(segs[i].Path)
		if err != nil {
			return nil, err
		}
		have += c
		if have >= n {
			return segs[i:], nil
		}
	}
	return segs, nil
}

func countFileLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n := 0
	for {
		k, err := f.Read(buf)
		n += bytes.Count(buf[:k], []byte("\n"))
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Follower reads a trail from a file onwards and, polled again, the lines
// written since, moving on to the files rotation adds. A line still being
// written (no newline yet) is returned once it is complete.
type Follower struct {
	dir  string
	seg  Segment
	off  int64 // offset after the last complete line returned
	no   int   // its line number
	line Line
	buf  []byte
}

// NewFollower starts at the beginning of from, a file of the trail in dir.
func NewFollower(dir string, from Segment) *Follower {
	return &Follower{dir: dir, seg: from}
}

// Poll calls fn for every complete line written since the last Poll, in
// order, across files. The Line is valid during the call.
func (f *Follower) Poll(fn func(l *Line) error) error {
	for {
		if _, err := f.readFile(fn); err != nil {
			return err
		}
		next, ok, err := f.nextSegment()
		if err != nil || !ok {
			return err
		}
		// A newer file exists, so this one is finished: read it once more
		// for what was written between the read above and the listing.
		partial, err := f.readFile(fn)
		if err != nil {
			return err
		}
		// Rotation moved on: what is left of this file will never be
		// completed.
		if len(partial) > 0 {
			f.line = Line{File: f.seg.Path, No: f.no + 1, Bytes: partial, Partial: true}
			if err := fn(&f.line); err != nil {
				return err
			}
		}
		f.seg, f.off, f.no = next, 0, 0
	}
}

// readFile returns the complete lines of the current file after f.off and
// the partial line after them, if any.
func (f *Follower) readFile(fn func(l *Line) error) (partial []byte, err error) {
	file, err := os.Open(f.seg.Path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	if _, err := file.Seek(f.off, io.SeekStart); err != nil {
		return nil, err
	}
	r := bufio.NewReaderSize(file, 64<<10)
	for {
		if atZeros(r) {
			return nil, nil // the writer's zeroed space: no more lines yet
		}
		f.buf = f.buf[:0]
		var err error
		for {
			var chunk []byte
			chunk, err = r.ReadSlice('\n')
			f.buf = append(f.buf, chunk...)
			if err != bufio.ErrBufferFull {
				break
			}
			if len(f.buf) > MaxLineBytes {
				return nil, errors.New(f.seg.Path + ": line longer than 1 MiB")
			}
		}
		if err == io.EOF {
			return f.buf, nil
		}
		if err != nil {
			return nil, err
		}
		f.off += int64(len(f.buf))
		f.no++
		f.line = Line{File: f.seg.Path, No: f.no, Bytes: bytes.TrimSuffix(f.buf, []byte("\n"))}
		if len(f.line.Bytes) == 0 {
			continue
		}
		if err := fn(&f.line); err != nil {
			return nil, err
		}
	}
}

func (f *Follower) nextSegment() (Segment, bool, error) {
	segs, err := Segments(f.dir)
	if err != nil {
		return Segment{}, false, err
	}
	for _, s := range segs {
		if s.First > f.seg.First {
			return s, true, nil
		}
	}
	return Segment{}, false, nil
}

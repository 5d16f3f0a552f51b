package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// File names: audit-<first seq, 20 digits>.jsonl.
const (
	filePrefix = "audit-"
	fileSuffix = ".jsonl"
)

// FileName is the name of the file whose first event has seq first.
func FileName(first uint64) string {
	return fmt.Sprintf("%s%020d%s", filePrefix, first, fileSuffix)
}

// Segment is one file of a trail.
type Segment struct {
	Path  string
	First uint64 // the seq its name says it starts with
}

// Segments lists the trail's files in dir, in order.
func Segments(dir string) ([]Segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Segment
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || !strings.HasPrefix(n, filePrefix) || !strings.HasSuffix(n, fileSuffix) {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, filePrefix), fileSuffix), 10, 64)
		if err != nil {
			continue
		}
		out = append(out, Segment{Path: filepath.Join(dir, n), First: first})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First < out[j].First })
	return out, nil
}

// atZeros says the next byte is a NUL: the writer zero-fills a file
// ahead of its last line (Trail.write), so readers stop there. A line
// never starts with a NUL.
func atZeros(br *bufio.Reader) bool {
	b, err := br.Peek(1)
	return err == nil && b[0] == 0
}

// MaxLineBytes bounds one line of a trail file when reading.
const MaxLineBytes = 1 << 20

// Line is one line of a trail as a Reader returns it.
type Line struct {
	File  string // path of the file
	No    int    // line number in the file, from 1
	Bytes []byte // the line without its newline; valid until the next Next
	// Partial: the file's last line has no newline (a write cut short).
	Partial bool
}

// Reader streams the lines of a trail's files in order, with flat memory.
type Reader struct {
	segs []Segment
	i    int
	f    *os.File
	sc   *bufio.Reader
	line Line
	err  error
	buf  []byte
}

// NewReader reads the files segs (from Segments), in order.
func NewReader(segs []Segment) *Reader { return &Reader{segs: segs, i: -1} }

// Next advances to the next line; false at the end or on an error (Err).
func (r *Reader) Next() bool {
	for r.err == nil {
		if r.f == nil {
			r.i++
			if r.i >= len(r.segs) {
				return false
			}
			f, err := os.Open(r.segs[r.i].Path)
			if err != nil {
				r.err = err
				return false
			}
			r.f, r.sc = f, bufio.NewReaderSize(f, 64<<10)
			r.line = Line{File: r.segs[r.i].Path}
		}
		if atZeros(r.sc) {
			// Space the writer zeroed ahead: the file's data ends here.
			r.closeFile()
			continue
		}
		b, err := r.readLine()
		if len(b) > 0 {
			r.line.No++
			r.line.Bytes = b
			r.line.Partial = err == io.EOF
			if err == io.EOF {
				r.closeFile()
			}
			return true
		}
		if err == io.EOF {
			r.closeFile()
			continue
		}
		if err != nil {
			r.err = fmt.Errorf("%s: %w", r.line.File, err)
		}
	}
	return false
}

func (r *Reader) readLine() ([]byte, error) {
	r.buf = r.buf[:0]
	for {
		chunk, err := r.sc.ReadSlice('\n')
		r.buf = append(r.buf, chunk...)
		if len(r.buf) > MaxLineBytes {
			return nil, errors.New("line longer than 1 MiB")
		}
		switch err {
		case nil:
			return bytes.TrimSuffix(r.buf, []byte("\n")), nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			return r.buf, io.EOF
		default:
			return nil, err
		}
	}
}

func (r *Reader) closeFile() {
	r.f.Close()
	r.f, r.sc = nil, nil
}

// Line returns the current line.
func (r *Reader) Line() *Line { return &r.line }

// Err is the error that ended Next, if any.
func (r *Reader) Err() error { return r.err }

// Close releases the open file.
func (r *Reader) Close() error {
	if r.f != nil {
		r.closeFile()
	}
	return nil
}

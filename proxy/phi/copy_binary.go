package phi

import (
	"encoding/binary"
	"math"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/pgerr"
)

// COPY FORMAT binary (PostgreSQL's copyfromparse.c CopyReadBinaryTuple,
// copyto.c CopyOneRowTo): the 11-byte signature, an int32 of flags, an
// int32 header extension length and its bytes; then per tuple an int16
// field count (-1 is the trailer) and per field an int32 length (-1 is
// NULL) and the bytes. CopyData boundaries mean nothing here either: the
// header and each tuple are taken whole once all their bytes are in, so
// memory is bounded by the largest tuple (and a header extension is
// passed through without being kept).
//
// A PHI field holds, on the client's side, the binary form of the
// column's logical type (pgx's CopyFrom encodes each value with the type
// the proxy reported for the column) and, on the server's side, the raw
// envelope bytes of a bytea. FROM STDIN canonicalises and encrypts it
// with a new length; TO STDOUT decrypts it and writes the logical type's
// binary form, as the plaintext table would send it.

// copySignature starts every binary COPY stream.
const copySignature = "PGCOPY\n\377\r\n\000"

// binHeaderLen is the fixed header: signature, flags, extension length.
const binHeaderLen = len(copySignature) + 4 + 4

// binPart is where a binary COPY stream is.
type binPart uint8

const (
	binHeader binPart = iota // before the fixed header is complete
	binExt                   // passing the header extension
	binTuples                // at a tuple (or the trailer)
	binEnd                   // after the trailer
)

func badCopyFile(msg string) error {
	return pgerr.New(pgerr.BadCopyFileFormat, msg)
}

// feedBinary is feed for FORMAT binary.
func (c *copyStream) feedBinary(data []byte, final bool) ([]byte, error) {
	c.out = c.out[:0]
	b := data
	if len(c.pending) > 0 {
		c.pending = append(c.pending, data...)
		b = c.pending
	}
loop:
	for len(b) > 0 {
		switch c.bin {
		case binHeader:
			if len(b) < binHeaderLen {
				if len(b) >= len(copySignature) && string(b[:len(copySignature)]) != copySignature {
					return nil, badCopyFile("COPY file signature not recognized")
				}
				break loop
			}
			if err := c.header(b[:binHeaderLen]); err != nil {
				return nil, err
			}
			c.out = append(c.out, b[:binHeaderLen]...)
			b = b[binHeaderLen:]
			c.bin = binExt
			if c.skip == 0 {
				c.bin = binTuples
			}
		case binExt:
			n := min(c.skip, len(b))
			c.out = append(c.out, b[:n]...)
			b = b[n:]
			if c.skip -= n; c.skip == 0 {
				c.bin = binTuples
			}
		case binTuples:
			n, trailer, err := c.scanTuple(b)
			if err != nil {
				return nil, c.rowErr(err, "")
			}
			if n == 0 {
				break loop
			}
			if trailer {
				c.out = append(c.out, b[:n]...)
				c.bin = binEnd
			} else {
				if err := c.tuple(b[:n]); err != nil {
					return nil, err
				}
				c.line++
			}
			b = b[n:]
		case binEnd:
			if c.in {
				return nil, badCopyFile("received copy data after EOF marker")
			}
			b = nil // the server sends nothing after the trailer
		}
	}
	if final {
		switch {
		case c.bin == binHeader:
			return nil, badCopyFile("COPY file signature not recognized")
		case c.bin == binExt:
			return nil, badCopyFile("invalid COPY file header (wrong length)")
		case len(b) > 0:
			// A stream may end at a tuple boundary without the trailer,
			// as PostgreSQL accepts; not inside a tuple.
			return nil, badCopyFile("unexpected EOF in COPY data")
		}
	}
	c.keep(b)
	return c.out, nil
}

// header checks the fixed header h as ReceiveCopyBinaryHeader does.
func (c *copyStream) header(h []byte) error {
	if string(h[:len(copySignature)]) != copySignature {
		return badCopyFile("COPY file signature not recognized")
	}
	flags := binary.BigEndian.Uint32(h[len(copySignature):])
	if flags&(1<<16) != 0 {
		return badCopyFile("invalid COPY file header (WITH OIDS)")
	}
	if flags&^0xffff&^(1<<16) != 0 {
		return badCopyFile("unrecognized critical flags in COPY file header")
	}
	ext := int32(binary.BigEndian.Uint32(h[len(copySignature)+4:]))
	if ext < 0 {
		return badCopyFile("invalid COPY file header (missing length)")
	}
	c.skip = int(ext)
	return nil
}

// scanTuple returns the length of the tuple (or trailer) at b[0], or 0 if
// b does not hold all of it yet. It resumes after the fields already
// scanned (c.pos, c.nf), so a large field costs O(1) per CopyData, and it
// refuses a tuple larger than maxCopyRow as soon as its lengths say so.
func (c *copyStream) scanTuple(b []byte) (n int, trailer bool, err error) {
	if c.pos == 0 {
		if len(b) < 2 {
			return 0, false, nil
		}
		count := int16(binary.BigEndian.Uint16(b))
		if count == -1 {
			return 2, true, nil
		}
		if int(count) != len(c.fields) {
			return 0, false, pgerr.Newf(pgerr.BadCopyFileFormat, "row field count is %d, expected %d", count, len(c.fields))
		}
		c.pos, c.nf = 2, 0
	}
	for c.nf < len(c.fields) {
		if len(b) < c.pos+4 {
			return 0, false, nil
		}
		size := int32(binary.BigEndian.Uint32(b[c.pos:]))
		if size < -1 {
			return 0, false, badCopyFile("invalid field size")
		}
		next := c.pos + 4 + max(int(size), 0)
		if next > maxCopyRow {
			return 0, false, pgerr.Newf(pgerr.ProgramLimitExceeded, "COPY row of %s is too large for phiproxy", c.rel)
		}
		if len(b) < next {
			return 0, false, nil
		}
		c.pos, c.nf = next, c.nf+1
	}
	n = c.pos
	c.pos, c.nf = 0, 0
	return n, false, nil
}

// tuple transforms one complete tuple t (checked by scanTuple) into c.out.
func (c *copyStream) tuple(t []byte) error {
	c.out = append(c.out, t[:2]...)
	p := 2
	for i := range c.fields {
		size := int(int32(binary.BigEndian.Uint32(t[p:])))
		start := p
		p += 4
		if size < 0 {
			c.out = append(c.out, t[start:p]...)
			continue
		}
		v := t[p : p+size]
		p += size
		fld := &c.fields[i]
		if fld.col == nil {
			// A binary field holds an envelope raw (a bytea, or an
			// element of an array or record) or as text: the recognizer
			// looks for every form at every offset.
			if !c.in && c.rec.Contains(v) {
				return c.rowErr(copySafetyErr(fld.name, c.rel), "")
			}
			c.out = append(c.out, t[start:p]...)
			continue
		}
		var err error
		if c.in {
			err = c.encryptBinary(fld, v)
		} else {
			err = c.decryptBinary(fld, v)
		}
		if err != nil {
			return c.rowErr(err, fld.name)
		}
	}
	return nil
}

// encryptBinary writes the length and ciphertext of a PHI field's binary
// value v into c.out.
func (c *copyStream) encryptBinary(fld *copyField, v []byte) error {
	n := len(c.out)
	out, err := c.enc.AppendSeal(append(c.out, 0, 0, 0, 0), fld.sealColumn(), copyInput(codec.BinaryFormat), v)
	if err != nil {
		return err
	}
	return c.setLen(out, n)
}

// decryptBinary writes the length and the logical type's binary form of
// a PHI field's envelope v into c.out.
func (c *copyStream) decryptBinary(fld *copyField, v []byte) error {
	if fld.cipher == nil {
		return decryptErr(fld.col.Ident)
	}
	n := len(c.out)
	out, err := c.enc.AppendOpen(append(c.out, 0, 0, 0, 0), fld.sealColumn(), codec.BinaryFormat, v)
	if err != nil {
		return decryptErr(fld.col.Ident)
	}
	return c.setLen(out, n)
}

// setLen makes out, whose field starts with a length placeholder at n,
// c.out with the field's length filled in.
func (c *copyStream) setLen(out []byte, n int) error {
	size := len(out) - n - 4
	if size > math.MaxInt32 {
		return pgerr.Newf(pgerr.ProgramLimitExceeded, "COPY field of %s is too large for phiproxy", c.rel)
	}
	binary.BigEndian.PutUint32(out[n:], uint32(size))
	c.out = out
	return nil
}

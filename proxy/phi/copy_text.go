package phi

import (
	"bytes"
	"encoding/hex"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
)

// The text and csv row syntax of COPY: finding rows and fields as
// PostgreSQL's COPY FROM does (copyfromparse.c), reading and writing
// values as CopyReadAttributesText/CSV and CopyAttributeOutText/CSV do,
// and the per-row transform of PHI fields.

// Results of copyStream.scanLine.
const (
	lineMore   = iota // no complete row yet
	lineRow           // a row
	lineMarker        // the end-of-data marker `\.` (after the row's bytes)
)

// span is one field's raw bytes in a row.
type span struct {
	start, end int
	quoted     bool // csv: the field has a quoted part
}

// scanLine finds the end of the row that starts at b[0], resuming after
// b[:c.pos]. It returns the length of the row's content, the bytes to
// consume (content and line end, or the marker), and the kind.
func (c *copyStream) scanLine(b []byte, final bool) (n, adv, kind int, err error) {
	i := c.pos
	for i < len(b) {
		ch := b[i]
		if c.f.csv {
			if i == 0 && ch == '\\' {
				// `\.` alone on a line ends the data; anywhere else it
				// is data in csv.
				end, k := markerEnd(b, 0, final)
				if k == lineMore {
					c.pos = 0
					return 0, 0, lineMore, nil
				}
				if k == lineMarker {
					return 0, end, lineMarker, nil
				}
			}
			// As CopyReadLineText: an escape equal to the quote is no
			// escape here, the quote just toggles.
			esc := c.f.escape != c.f.quote && ch == c.f.escape
			if c.inQuote && esc {
				c.lastEsc = !c.lastEsc
			}
			if ch == c.f.quote && !c.lastEsc {
				c.inQuote = !c.inQuote
			}
			if !esc {
				c.lastEsc = false
			}
			if c.inQuote {
				i++
				continue
			}
		} else if ch == '\\' {
			if i+1 >= len(b) {
				if !final {
					c.pos = i
					return 0, 0, lineMore, nil
				}
				i++
				continue
			}
			if b[i+1] == '.' {
				end, k := markerEnd(b, i, final)
				switch k {
				case lineMore:
					c.pos = i
					return 0, 0, lineMore, nil
				case lineMarker:
					return i, end, lineMarker, nil
				}
				return 0, 0, 0, pgerr.New(pgerr.BadCopyFileFormat, "end-of-copy marker corrupt")
			}
			i += 2 // the escaped byte, a line end included, is data
			continue
		}
		switch ch {
		case '\n':
			return i, i + 1, lineRow, nil
		case '\r':
			if i+1 < len(b) {
				if b[i+1] == '\n' {
					return i, i + 2, lineRow, nil
				}
				return i, i + 1, lineRow, nil
			}
			if final {
				return i, i + 1, lineRow, nil
			}
			// \r or \r\n: wait for the next byte. The quote state is not
			// changed by \r, so rescanning it is harmless.
			c.pos = i
			return 0, 0, lineMore, nil
		}
		i++
	}
	c.pos = i
	if final && len(b) > 0 {
		return len(b), len(b), lineRow, nil
	}
	return 0, 0, lineMore, nil
}

// markerEnd looks at `\.` at b[i:]: lineMarker with the end of the marker
// and its line end, lineRow if it is not a marker, lineMore if it cannot
// tell yet.
func markerEnd(b []byte, i int, final bool) (int, int) {
	if i+1 >= len(b) {
		if final {
			return 0, lineRow
		}
		return 0, lineMore
	}
	if b[i+1] != '.' {
		return 0, lineRow
	}
	j := i + 2
	if j >= len(b) {
		if final {
			return j, lineMarker
		}
		return 0, lineMore
	}
	switch b[j] {
	case '\n':
		return j + 1, lineMarker
	case '\r':
		if j+1 < len(b) {
			if b[j+1] == '\n' {
				return j + 2, lineMarker
			}
			return j + 1, lineMarker
		}
		if final {
			return j + 1, lineMarker
		}
		return 0, lineMore
	}
	return 0, lineRow
}

// split finds the raw fields of row.
func (c *copyStream) split(row []byte) error {
	c.spans = c.spans[:0]
	if !c.f.csv {
		start := 0
		for i := 0; i < len(row); i++ {
			switch row[i] {
			case c.f.delim:
				c.spans = append(c.spans, span{start: start, end: i})
				start = i + 1
			case '\\':
				i++
			}
		}
		c.spans = append(c.spans, span{start: start, end: len(row)})
		return nil
	}
	start, quoted := 0, false
	for i := 0; ; {
		if i >= len(row) {
			c.spans = append(c.spans, span{start: start, end: len(row), quoted: quoted})
			return nil
		}
		ch := row[i]
		i++
		switch ch {
		case c.f.delim:
			c.spans = append(c.spans, span{start: start, end: i - 1, quoted: quoted})
			start, quoted = i, false
		case c.f.quote:
			quoted = true
			for {
				if i >= len(row) {
					return pgerr.New(pgerr.BadCopyFileFormat, "unterminated CSV quoted field")
				}
				ch := row[i]
				i++
				if ch == c.f.escape && i < len(row) && (row[i] == c.f.escape || row[i] == c.f.quote) {
					i++
					continue
				}
				if ch == c.f.quote {
					break
				}
			}
		}
	}
}

// textValue de-escapes a text-format field (CopyReadAttributesText).
func textValue(dst, raw []byte) []byte {
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		if ch != '\\' {
			dst = append(dst, ch)
			continue
		}
		i++
		if i >= len(raw) {
			break
		}
		ch = raw[i]
		switch ch {
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(ch - '0')
			for k := 0; k < 2 && i+1 < len(raw) && raw[i+1] >= '0' && raw[i+1] <= '7'; k++ {
				i++
				v = v<<3 + int(raw[i]-'0')
			}
			ch = byte(v)
		case 'x':
			if i+1 < len(raw) {
				if h, ok := codec.Unhex(raw[i+1]); ok {
					i++
					v := h
					if i+1 < len(raw) {
						if h, ok := codec.Unhex(raw[i+1]); ok {
							i++
							v = v<<4 + h
						}
					}
					ch = v
				}
			}
		case 'b':
			ch = '\b'
		case 'f':
			ch = '\f'
		case 'n':
			ch = '\n'
		case 'r':
			ch = '\r'
		case 't':
			ch = '\t'
		case 'v':
			ch = '\v'
		}
		dst = append(dst, ch)
	}
	return dst
}

// csvValue is the value of a csv field (CopyReadAttributesCSV); raw is
// the field as split found it.
func (c *copyStream) csvValue(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		ch := raw[i]
		i++
		if ch != c.f.quote {
			dst = append(dst, ch)
			continue
		}
		for i < len(raw) {
			ch := raw[i]
			i++
			if ch == c.f.escape && i < len(raw) && (raw[i] == c.f.escape || raw[i] == c.f.quote) {
				dst = append(dst, raw[i])
				i++
				continue
			}
			if ch == c.f.quote {
				break
			}
			dst = append(dst, ch)
		}
	}
	return dst
}

// appendText writes v as CopyAttributeOutText does.
func appendText(dst, v []byte, delim byte) []byte {
	for _, ch := range v {
		switch {
		case ch < 0x20:
			e := byte(0)
			switch ch {
			case '\b':
				e = 'b'
			case '\f':
				e = 'f'
			case '\n':
				e = 'n'
			case '\r':
				e = 'r'
			case '\t':
				e = 't'
			case '\v':
				e = 'v'
			}
			if e != 0 {
				dst = append(dst, '\\', e)
				continue
			}
			if ch == delim {
				dst = append(dst, '\\')
			}
		case ch == '\\' || ch == delim:
			dst = append(dst, '\\')
		}
		dst = append(dst, ch)
	}
	return dst
}

// appendCSV writes v as CopyAttributeOutCSV does.
func (f *copyFormat) appendCSV(dst, v []byte, quote, single bool) []byte {
	if !quote && bytes.Equal(v, f.null) {
		quote = true
	}
	if !quote {
		if single && string(v) == `\.` {
			quote = true
		} else {
			for _, ch := range v {
				if ch == f.delim || ch == f.quote || ch == '\n' || ch == '\r' {
					quote = true
					break
				}
			}
		}
	}
	if !quote {
		return append(dst, v...)
	}
	dst = append(dst, f.quote)
	for _, ch := range v {
		if ch == f.quote || ch == f.escape {
			dst = append(dst, f.escape)
		}
		dst = append(dst, ch)
	}
	return append(dst, f.quote)
}

// row transforms one row (without its line end) into c.out.
func (c *copyStream) row(row []byte) error {
	if err := c.split(row); err != nil {
		return c.rowErr(err, "")
	}
	pos := 0
	for i, sp := range c.spans {
		raw := row[sp.start:sp.end]
		if i >= len(c.fields) || c.fields[i].col == nil {
			if !c.in && crypto.MayContain(raw) && c.carriesEnvelope(raw) {
				return copySafetyErr(c.fieldName(i), c.rel)
			}
			continue
		}
		fld := &c.fields[i]
		null := bytes.Equal(raw, c.f.null) && !sp.quoted
		var v []byte
		if c.f.csv {
			v = c.csvValue(c.val[:0], raw)
			if c.in && null && fld.forceNotNull {
				null = false
			} else if c.in && !null && fld.forceNull && bytes.Equal(v, c.f.null) {
				null = true
			}
		} else if !null {
			v = textValue(c.val[:0], raw)
		}
		if v != nil {
			c.val = v[:0]
		}
		if null {
			continue
		}
		c.out = append(c.out, row[pos:sp.start]...)
		pos = sp.end
		var err error
		if c.in {
			err = c.encrypt(fld, v)
		} else {
			err = c.decrypt(fld, v, len(c.fields) == 1)
		}
		clear(v)
		if err != nil {
			return c.rowErr(err, fld.name)
		}
	}
	c.out = append(c.out, row[pos:]...)
	return nil
}

// carriesEnvelope is the safety net for a non-PHI field of COPY output:
// the field's value, de-escaped or unquoted, holds an envelope.
func (c *copyStream) carriesEnvelope(raw []byte) bool {
	var v []byte
	if c.f.csv {
		v = c.csvValue(c.val[:0], raw)
	} else {
		v = textValue(c.val[:0], raw)
	}
	c.val = v[:0]
	return c.rec.Contains(v)
}

// encrypt writes the ciphertext of a PHI field's value v into c.out.
func (c *copyStream) encrypt(fld *copyField, v []byte) error {
	ct, err := c.enc.AppendSeal(c.ct[:0], fld.sealColumn(), copyInput(codec.TextFormat), v)
	if err != nil {
		return err
	}
	if !c.f.csv {
		// `\x…` with its backslash escaped for text format.
		c.out = append(c.out, '\\', '\\', 'x')
		c.out = hex.AppendEncode(c.out, ct)
		c.ct = ct[:0]
		return nil
	}
	n := len(ct)
	ct = codec.AppendByteaText(ct, ct)
	c.out = c.f.appendCSV(c.out, ct[n:], false, false)
	c.ct = ct[:0]
	return nil
}

// decrypt writes the plaintext of a PHI field's bytea text v into c.out.
func (c *copyStream) decrypt(fld *copyField, v []byte, single bool) error {
	ct, err := c.enc.DecodeStored(v, codec.TextFormat)
	if err != nil || fld.cipher == nil {
		return decryptErr(fld.col.Ident)
	}
	plain, err := c.enc.AppendOpen(c.canon[:0], fld.sealColumn(), codec.TextFormat, ct)
	if err != nil {
		return decryptErr(fld.col.Ident)
	}
	if c.f.csv {
		c.out = c.f.appendCSV(c.out, plain, fld.forceQuote, single)
	} else {
		c.out = appendText(c.out, plain, c.f.delim)
	}
	clear(plain)
	c.canon = plain[:0]
	return nil
}

package phi

import (
	"bytes"
	"encoding/hex"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/proxy/codec"
	"github.com/phiproxy/phiproxy/rewrite"
)

// COPY on PHI relations (DESIGN §5.6).
//
// COPY FROM STDIN: the client streams CopyData whose boundaries mean
// nothing (psql sends 8 KiB chunks cut anywhere, a csv quoted field may
// hold newlines). A copyStream finds the rows as PostgreSQL's COPY FROM
// does (copyfromparse.c: CopyReadLineText, CopyReadAttributesText/CSV),
// keeps an incomplete row until the rest arrives, and rewrites each
// complete row: every PHI field is de-escaped, canonicalised, encrypted
// and written back as bytea text (`\\x…` in text format, `\x…` in csv);
// every other byte (non-PHI fields, delimiters, line ends, the header) is
// sent unchanged. Memory is bounded by the largest row.
//
// The decision to transform is made on the client goroutine when the
// COPY is sent, not when the server answers CopyInResponse: pgx sends
// CopyData right behind the Query without waiting. A value that does not
// canonicalise fails the COPY as PostgreSQL would: phiproxy sends CopyFail
// upstream (the server aborts the COPY and the transaction it runs in),
// drops the rest of the client's data, and the server's ErrorResponse to
// the CopyFail is replaced by our error (22P02, 22007, ...), which names
// the column and line, never the value.
//
// COPY TO STDOUT: the server sends one row per CopyData, but the parser
// does not rely on it. PHI fields are decoded from bytea text, decrypted
// and written in their canonical text form (timestamptz in the session's
// TimeZone), escaped or quoted exactly as PostgreSQL's CopyAttributeOutText
// and CopyAttributeOutCSV would write the plaintext, so the output equals
// a plaintext table's. Every other field is checked by the safety net.
//
// FORMAT binary on a PHI relation is refused (0A000).

// maxCopyRow bounds one row of a COPY stream, as PostgreSQL's 1 GB
// allocation limit bounds its line buffer.
const maxCopyRow = 1 << 30

// copyFailMessage is the CopyFail message phiproxy sends upstream; the
// server's answer (57014 "COPY from stdin failed: …") is replaced by the
// refusal.
const copyFailMessage = "phiproxy refused a COPY row"

// badCopyFileFormat is PostgreSQL's bad_copy_file_format.
var badCopyFileFormat = pgerr.MakeCode("22P04")

// copyFormat is the row syntax of one COPY (PostgreSQL's CopyFormatOptions).
type copyFormat struct {
	csv                  bool
	delim, quote, escape byte
	null                 []byte
	header               bool
}

// copyField is one field of a COPY row.
type copyField struct {
	name   string
	col    *rewrite.PHIColumn // nil: not PHI, passed through
	cipher *crypto.Cipher     // nil for a PHI column whose key is not loaded
	// csv only.
	forceQuote, forceNotNull, forceNull bool
}

// boolOption reads a COPY boolean option as PostgreSQL's defGetBoolean.
func boolOption(v string) (bool, bool) {
	switch strings.ToLower(v) {
	case "", "true", "on", "1":
		return true, true
	case "false", "off", "0":
		return false, true
	}
	return false, false
}

func singleByte(opt, v string) (byte, error) {
	if len(v) != 1 {
		return 0, pgerr.Newf(pgerr.FeatureNotSupported, "COPY %s must be a single one-byte character", opt)
	}
	return v[0], nil
}

// parseCopyFormat reads the options of a COPY on a PHI relation and
// refuses what phiproxy cannot stream. Errors are the ones PostgreSQL
// raises for the same options where it would raise one.
func parseCopyFormat(c *rewrite.Copy, rel string) (copyFormat, error) {
	f := copyFormat{delim: '\t', null: []byte(`\N`)}
	switch c.Format {
	case "text":
	case "csv":
		f = copyFormat{csv: true, delim: ',', quote: '"', escape: '"'}
	case "binary":
		return f, pgerr.Newf(pgerr.FeatureNotSupported, "COPY in binary format is not supported on PHI relation %s", rel).
			WithHint("use FORMAT text or FORMAT csv (psql's \\copy does); phiproxy encrypts and decrypts those row by row")
	default:
		return f, pgerr.Newf(pgerr.InvalidParameterValue, "COPY format \"%s\" not recognized", c.Format)
	}
	escapeSet := false
	for name, v := range c.Options {
		var err error
		switch name {
		case "delimiter":
			f.delim, err = singleByte("delimiter", v)
		case "null":
			f.null = []byte(v)
		case "quote":
			f.quote, err = singleByte("quote", v)
		case "escape":
			f.escape, err = singleByte("escape", v)
			escapeSet = true
		case "header":
			ok := false
			f.header, ok = boolOption(v)
			if !ok && strings.EqualFold(v, "match") {
				f.header, ok = c.In, c.In
			}
			if !ok {
				err = pgerr.New(pgerr.InvalidParameterValue, "header requires a Boolean value or \"match\"")
			}
		case "encoding":
			e := strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(v))
			if e != "utf8" && e != "unicode" {
				err = pgerr.Newf(pgerr.FeatureNotSupported, "COPY with ENCODING other than UTF8 is not supported on PHI relation %s", rel).
					WithHint("convert the data to UTF8 and leave the ENCODING option out")
			}
		case "default":
			err = pgerr.Newf(pgerr.FeatureNotSupported, "COPY with DEFAULT is not supported on PHI relation %s", rel).
				WithHint("leave the DEFAULT option out")
		}
		if err != nil {
			return f, err
		}
	}
	if !f.csv {
		if _, ok := c.Options["quote"]; ok {
			return f, pgerr.New(pgerr.FeatureNotSupported, "COPY QUOTE requires CSV mode")
		}
		if escapeSet {
			return f, pgerr.New(pgerr.FeatureNotSupported, "COPY ESCAPE requires CSV mode")
		}
		// PostgreSQL refuses these delimiters in text format, which keeps
		// the bytea text form written for PHI fields unambiguous.
		if strings.IndexByte("\\.abcdefghijklmnopqrstuvwxyz0123456789", f.delim) >= 0 {
			return f, pgerr.Newf(pgerr.FeatureNotSupported, "COPY delimiter cannot be \"%c\"", f.delim)
		}
	} else if !escapeSet {
		f.escape = f.quote
	}
	if f.delim == '\n' || f.delim == '\r' {
		return f, pgerr.New(pgerr.InvalidParameterValue, "COPY delimiter cannot be newline or carriage return")
	}
	if bytes.IndexByte(f.null, '\n') >= 0 || bytes.IndexByte(f.null, '\r') >= 0 {
		return f, pgerr.New(pgerr.InvalidParameterValue, "COPY null representation cannot use newline or carriage return")
	}
	if f.csv && f.delim == f.quote {
		return f, pgerr.New(pgerr.InvalidParameterValue, "COPY delimiter and quote must be different")
	}
	return f, nil
}

// columnSet reads a FORCE_QUOTE / FORCE_NOT_NULL / FORCE_NULL column list
// ("a,b" or "*").
func columnSet(v string) map[string]bool {
	m := map[string]bool{}
	for _, n := range strings.Split(v, ",") {
		m[strings.TrimSpace(n)] = true
	}
	return m
}

// copyCheck refuses the COPY statements on PHI relations that phiproxy
// cannot stream (binary format, options it cannot follow).
func copyCheck(st *rewrite.Statement) error {
	if st.Copy == nil || !st.TouchesPHI {
		return nil
	}
	_, err := parseCopyFormat(st.Copy, strings.Join(st.Relations, ", "))
	return err
}

// newCopyStream builds the row transform of a COPY on a PHI relation
// (checked by copyCheck when the statement was sent).
func (s *session) newCopyStream(st *rewrite.Statement) (*copyStream, error) {
	rel := strings.Join(st.Relations, ", ")
	f, err := parseCopyFormat(st.Copy, rel)
	if err != nil {
		return nil, err
	}
	c := &copyStream{f: f, in: st.Copy.In, rel: rel, cd: s.codec()}
	fq, fnn, fn := columnSet(st.Copy.Options["force_quote"]), columnSet(st.Copy.Options["force_not_null"]), columnSet(st.Copy.Options["force_null"])
	for _, sf := range st.Copy.Fields {
		fld := copyField{name: sf.Name, col: sf.Column}
		if f.csv {
			fld.forceQuote = fq[sf.Name] || fq["*"]
			fld.forceNotNull = fnn[sf.Name] || fnn["*"]
			fld.forceNull = fn[sf.Name] || fn["*"]
		}
		if sf.Column != nil {
			fld.cipher, _ = s.p.keys.Cipher(sf.Column.Key)
		}
		c.fields = append(c.fields, fld)
	}
	return c, nil
}

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

// copyStream transforms the rows of one COPY, in either direction.
type copyStream struct {
	f      copyFormat
	in     bool
	rel    string
	fields []copyField
	cd     codec.Codec

	// pending is an incomplete row (its bytes from the row's start); pos,
	// inQuote and lastEsc are the scanner's state after pending[:pos].
	pending []byte
	pos     int
	inQuote bool
	lastEsc bool

	line int  // rows seen (the header counts, as in PostgreSQL's messages)
	done bool // the end-of-data marker was seen: the rest is ignored

	out   []byte
	spans []span
	val   []byte // scratch: a de-escaped PHI field (plaintext on the way in)
	canon []byte // scratch: a canonical or decrypted plaintext
	ct    []byte // scratch: a ciphertext and its bytea text form
}

// feed transforms data, the next chunk of the COPY stream, and returns
// the complete rows it finished, transformed (valid until the next call).
// final says the stream ends after data (CopyDone): a last row without a
// line end is a row.
func (c *copyStream) feed(data []byte, final bool) ([]byte, error) {
	c.out = c.out[:0]
	if c.done {
		return nil, nil
	}
	b := data
	if len(c.pending) > 0 {
		c.pending = append(c.pending, data...)
		b = c.pending
	}
	for len(b) > 0 && !c.done {
		n, adv, kind, err := c.scanLine(b, final)
		if err != nil {
			return nil, err
		}
		if kind == lineMore {
			break
		}
		c.pos, c.inQuote, c.lastEsc = 0, false, false
		if kind == lineMarker {
			c.done = true
			if n == 0 {
				c.out = append(c.out, b[:adv]...)
				break
			}
		}
		if c.line == 0 && c.f.header {
			c.out = append(c.out, b[:adv]...)
		} else {
			if err := c.row(b[:n]); err != nil {
				return nil, err
			}
			c.out = append(c.out, b[n:adv]...)
		}
		c.line++
		b = b[adv:]
	}
	if c.done {
		c.pending = c.pending[:0]
		return c.out, nil
	}
	if len(b) > maxCopyRow {
		return nil, pgerr.Newf(pgerr.ProgramLimitExceeded, "COPY row of %s is too large for phiproxy", c.rel)
	}
	if len(c.pending) > 0 {
		c.pending = c.pending[:copy(c.pending, b)]
		if cap(c.pending) > 4<<20 && len(c.pending) < 64<<10 {
			c.pending = append([]byte(nil), c.pending...)
		}
	} else if len(b) > 0 {
		c.pending = append(c.pending[:0], b...)
	}
	return c.out, nil
}

// release drops buffers grown by a large row, so an idle session does not
// keep them.
func (c *copyStream) release() {
	if cap(c.out) > 1<<20 {
		c.out = nil
	}
	for _, p := range []*[]byte{&c.pending, &c.val, &c.canon, &c.ct} {
		clear((*p)[:cap(*p)])
		*p = (*p)[:0]
		if cap(*p) > 1<<20 {
			*p = nil
		}
	}
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
				return 0, 0, 0, pgerr.New(badCopyFileFormat, "end-of-copy marker corrupt")
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
					return pgerr.New(badCopyFileFormat, "unterminated CSV quoted field")
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
				if h, ok := unhex(raw[i+1]); ok {
					i++
					v := h
					if i+1 < len(raw) {
						if h, ok := unhex(raw[i+1]); ok {
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

func unhex(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
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
			if !c.in && (bytes.Contains(raw, []byte(config.EnvelopeHeader)) || bytes.Contains(raw, []byte("x504801")) || bytes.Contains(raw, []byte("X504801"))) {
				return pgerr.Newf(pgerr.Internal, "phiproxy refused to return ciphertext in COPY output column %s", c.fieldName(i)).
					WithHint("the value carries the PHI envelope header but is not a configured PHI column; copy the configured PHI column itself")
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

func (c *copyStream) fieldName(i int) string {
	if i < len(c.fields) {
		return c.fields[i].name
	}
	return "number " + itoa(i+1)
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

// rowErr adds where the error happened (never the value), as
// PostgreSQL's COPY context does.
func (c *copyStream) rowErr(err error, column string) error {
	pe := pgerr.As(err)
	if pe == nil {
		return err
	}
	where := "COPY " + c.rel + ", line " + itoa(c.line+1)
	if column != "" {
		where += ", column " + column
	}
	return pe.WithDetail(where)
}

// encrypt writes the ciphertext of a PHI field's value v into c.out.
func (c *copyStream) encrypt(fld *copyField, v []byte) error {
	canon, err := c.cd.AppendCanonical(c.canon[:0], fld.col.Type, codec.TextFormat, v)
	if err != nil {
		return codec.WithColumn(err, fld.col.Ident)
	}
	c.canon = canon[:0]
	if fld.cipher == nil {
		clear(canon)
		return pgerr.Newf(pgerr.Internal, "phiproxy has no key for PHI column %s", fld.col.Ident)
	}
	ct, err := fld.cipher.AppendEncrypt(c.ct[:0], canon)
	clear(canon)
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
	ct, err := codec.DecodeBytea(v, codec.TextFormat)
	if err != nil || fld.cipher == nil {
		return decryptErr(fld.col.Ident)
	}
	pt, err := fld.cipher.Decrypt(ct)
	if err != nil {
		return decryptErr(fld.col.Ident)
	}
	plain, err := c.cd.AppendEncode(c.canon[:0], fld.col.Type, codec.TextFormat, pt)
	clear(pt)
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

// copyIn is the COPY FROM STDIN the client is streaming (client goroutine).
type copyIn struct {
	x *copyStream // nil: drop the client's data (refused or failed)
}

// startCopyIn prepares the transform of the client's COPY data for the
// statements just sent (client goroutine). refused says the statements
// were replaced by a refusal: data for a refused COPY FROM is dropped, as
// the server would ignore it.
func (s *session) startCopyIn(stmts []*rewrite.Statement, refused bool) {
	s.cin = nil
	for _, st := range stmts {
		if st == nil || st.Copy == nil || !st.Copy.In || !st.TouchesPHI {
			continue
		}
		if refused {
			s.cin = &copyIn{}
			return
		}
		x, err := s.newCopyStream(st)
		if err != nil {
			s.cin = &copyIn{}
			return
		}
		s.copyErr.Store(nil)
		s.cin = &copyIn{x: x}
		return
	}
}

// copyInMessage handles CopyData, CopyDone and CopyFail from the client.
func (s *session) copyInMessage(msg pgproto3.FrontendMessage, out *proxy.Out) error {
	ci := s.cin
	if ci == nil {
		return out.Forward(msg)
	}
	if ci.x == nil {
		if _, ok := msg.(*pgproto3.CopyData); !ok {
			s.cin = nil
		}
		return nil
	}
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		b, err := ci.x.feed(m.Data, false)
		if err != nil {
			return s.failCopyIn(err, out)
		}
		if len(b) > 0 {
			return out.Forward(&pgproto3.CopyData{Data: b})
		}
		return nil
	case *pgproto3.CopyDone:
		b, err := ci.x.feed(nil, true)
		if err != nil {
			return s.failCopyIn(err, out)
		}
		if len(b) > 0 {
			if err := out.Forward(&pgproto3.CopyData{Data: b}); err != nil {
				return err
			}
		}
		ci.x.release()
		s.cin = nil
		return out.Forward(m)
	}
	// CopyFail from the client: the server aborts the COPY.
	ci.x.release()
	s.cin = nil
	return out.Forward(msg)
}

// failCopyIn aborts the COPY upstream with CopyFail; the server's error is
// replaced by err (server goroutine, in errorResponse) and the rest of the
// client's data is dropped.
func (s *session) failCopyIn(err error, out *proxy.Out) error {
	s.cin.x.release()
	s.cin.x = nil
	s.copyErr.Store(asRefusal(err))
	return out.Forward(&pgproto3.CopyFail{Message: copyFailMessage})
}

// copyFailed returns our refusal if m answers our CopyFail.
func (s *session) copyFailed(m *pgproto3.ErrorResponse) *pgerr.Error {
	if m.Code != pgerr.QueryCanceled.String() || !strings.HasSuffix(m.Message, copyFailMessage) {
		return nil
	}
	return s.copyErr.Swap(nil)
}

// copyStatement is the statement the front entry's COPY response belongs
// to.
func copyStatement(e *entry) *rewrite.Statement {
	switch e.kind {
	case entryQuery:
		if e.q.idx < len(e.q.stmts) {
			return e.q.stmts[e.q.idx]
		}
	case entryExecute:
		if e.portal != nil && e.portal.ps != nil {
			return e.portal.ps.st
		}
	}
	return nil
}

// copyOutStart handles CopyOutResponse (server goroutine).
func (s *session) copyOutStart(e *entry, m *pgproto3.CopyOutResponse, out *proxy.Out) error {
	s.cout = nil
	st := copyStatement(e)
	if st == nil || st.Copy == nil || st.Copy.In || !st.TouchesPHI {
		return out.Forward(m)
	}
	x, err := s.newCopyStream(st)
	if err != nil {
		return s.fail(asRefusal(err), out)
	}
	if m.OverallFormat != 0 || len(m.ColumnFormatCodes) != len(x.fields) {
		return s.fail(pgerr.Newf(pgerr.Internal, "phiproxy cannot match the COPY output of %s to its planned PHI transform", x.rel).
			WithHint("the relation's columns differ from what phiproxy planned; the catalog may have changed, retry"), out)
	}
	s.cout = x
	return out.Forward(m)
}

// copyOutData transforms a CopyData of a COPY TO on a PHI relation
// (server goroutine).
func (s *session) copyOutData(m *pgproto3.CopyData, final bool, out *proxy.Out) error {
	b, err := s.cout.feed(m.Data, final)
	if err != nil {
		s.cout = nil
		return s.fail(asRefusal(err), out)
	}
	if len(b) == 0 {
		return nil
	}
	return out.Forward(&pgproto3.CopyData{Data: b})
}

// copyInAlone refuses statement i, a COPY FROM STDIN on a PHI relation,
// when the Query holds another COPY: the client's data carries nothing
// that says which COPY it belongs to once one of them fails.
func copyInAlone(stmts []*rewrite.Statement, i int) error {
	st := stmts[i]
	if st.Copy == nil || !st.Copy.In || !st.TouchesPHI {
		return nil
	}
	for j, o := range stmts {
		if j != i && o.Tag == "COPY" {
			return pgerr.Newf(pgerr.FeatureNotSupported, "COPY FROM STDIN on PHI relation %s must be the only COPY of its query string", strings.Join(st.Relations, ", ")).
				WithHint("send each COPY as a query of its own")
		}
	}
	return nil
}

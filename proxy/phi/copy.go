package phi

import (
	"bytes"
	"github.com/phiproxy/phiproxy/policy"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/column"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
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
// FORMAT binary (copy_binary.go) streams tuples the same way: PHI fields
// arrive in their logical type's binary form and leave as raw envelope
// bytes, and back.

// maxCopyRow bounds one row of a COPY stream, as PostgreSQL's 1 GB
// allocation limit bounds its line buffer.
const maxCopyRow = 1 << 30

// copyFailMessage is the CopyFail message phiproxy sends upstream; the
// server's answer (57014 "COPY from stdin failed: …") is replaced by the
// refusal.
const copyFailMessage = "phiproxy refused a COPY row"

// copyFormat is the row syntax of one COPY (PostgreSQL's CopyFormatOptions).
type copyFormat struct {
	binary               bool
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
	// mask is the policy's access for COPY TO (Plaintext for COPY FROM).
	mask policy.Access
	// csv only.
	forceQuote, forceNotNull, forceNull bool
}

// sealColumn is the encoder's view of a PHI field's column.
func (f *copyField) sealColumn() column.Column {
	return column.Column{Ident: f.col.Ident, Type: f.col.Type, Cipher: f.cipher, Mask: f.mask}
}

// copyInput is how a COPY FROM field arrives: in the stream's format,
// assigned to its column (the column's type modifier applies).
func copyInput(format int16) column.Input {
	return column.Input{Format: format, Coercion: codec.Coercion{Assign: true}}
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
		f = copyFormat{binary: true}
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
	if f.binary {
		// PostgreSQL refuses the text and csv options in binary mode by
		// itself; none of them changes the binary stream.
		return f, nil
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
	c := &copyStream{f: f, in: st.Copy.In, rel: rel, enc: column.Encoder{Codec: s.codec()}, rec: s.p.keys.Recognizer()}
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
			fld.mask = policy.Plaintext
			if !st.Copy.In {
				// Decided again here (server goroutine): the COPY was
				// admitted before it was sent; a decision that turned to
				// deny since fails it.
				f := s.facts()
				if fld.mask = colPolicy(s.p.cur.Load(), sf.Column.Ident).ReadDecision(&f).Access; fld.mask == policy.Deny {
					return nil, pgerr.Newf(pgerr.InsufficientPrivilege, "permission denied for column %s", sf.Column.Ident)
				}
			}
		}
		c.fields = append(c.fields, fld)
	}
	return c, nil
}

// copyStream transforms the rows of one COPY, in either direction.
type copyStream struct {
	f      copyFormat
	in     bool
	rel    string
	fields []copyField
	enc    column.Encoder     // seals or opens PHI fields; wipes its plaintexts
	rec    *crypto.Recognizer // the safety net's, for non-PHI fields out

	// pending is an incomplete row (its bytes from the row's start); pos,
	// inQuote and lastEsc are the scanner's state after pending[:pos].
	pending []byte
	pos     int
	inQuote bool
	lastEsc bool

	line int  // rows seen (a text header counts, as in PostgreSQL's messages)
	done bool // the end-of-data marker was seen: the rest is ignored

	// FORMAT binary (copy_binary.go): where the stream is in the PGCOPY
	// structure; pos and nf are the tuple scanner's bytes and fields
	// scanned in pending, skip the header extension bytes still to pass.
	bin  binPart
	nf   int
	skip int

	out   []byte
	spans []span
	val   []byte // scratch: a de-escaped PHI field (plaintext on the way in)
	canon []byte // scratch: a decrypted value in the client's format
	ct    []byte // scratch: a ciphertext and its bytea text form
}

// feed is x.feed, timed for the Timer as op.
func (s *session) feed(x *copyStream, data []byte, final bool, op CryptoOp) ([]byte, error) {
	if s.tm == nil {
		return x.feed(data, final)
	}
	t0 := time.Now()
	b, err := x.feed(data, final)
	s.tm.ObserveCrypto(op, time.Since(t0))
	return b, err
}

// feed transforms data, the next chunk of the COPY stream, and returns
// the complete rows it finished, transformed (valid until the next call).
// final says the stream ends after data (CopyDone): a last row without a
// line end is a row.
func (c *copyStream) feed(data []byte, final bool) ([]byte, error) {
	if c.f.binary {
		return c.feedBinary(data, final)
	}
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
	c.keep(b)
	return c.out, nil
}

// keep makes b, the unconsumed end of the stream (possibly within
// c.pending), the pending bytes.
func (c *copyStream) keep(b []byte) {
	if len(c.pending) > 0 {
		c.pending = c.pending[:copy(c.pending, b)]
		if cap(c.pending) > 4<<20 && len(c.pending) < 64<<10 {
			c.pending = append([]byte(nil), c.pending...)
		}
	} else if len(b) > 0 {
		c.pending = append(c.pending[:0], b...)
	}
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

func (c *copyStream) fieldName(i int) string {
	if i < len(c.fields) {
		return c.fields[i].name
	}
	return "number " + strconv.Itoa(i+1)
}

// rowErr adds where the error happened (never the value), as
// PostgreSQL's COPY context does.
func (c *copyStream) rowErr(err error, column string) error {
	pe := pgerr.As(err)
	if pe == nil {
		return err
	}
	where := "COPY " + c.rel + ", line " + strconv.Itoa(c.line+1)
	if column != "" {
		where += ", column " + column
	}
	return pe.WithDetail(where)
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
		return out.ForwardUnchanged()
	}
	if ci.x == nil {
		if _, ok := msg.(*pgproto3.CopyData); !ok {
			s.cin = nil
		}
		return nil
	}
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		b, err := s.feed(ci.x, m.Data, false, CryptoEncrypt)
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
		return out.ForwardUnchanged()
	}
	// CopyFail from the client: the server aborts the COPY.
	ci.x.release()
	s.cin = nil
	return out.ForwardUnchanged()
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
		if e.portal.ps != nil {
			return e.portal.ps.st
		}
	}
	return nil
}

// copySQL is the client's text of the front entry's COPY and the
// statement's index in it.
func copySQL(e *entry) (string, int) {
	switch e.kind {
	case entryQuery:
		return e.q.sql, e.q.idx
	case entryExecute:
		if e.portal.ps != nil {
			return e.portal.ps.sql, 0
		}
	}
	return "", -1
}

// copyOutStart handles CopyOutResponse (server goroutine).
func (s *session) copyOutStart(e *entry, m *pgproto3.CopyOutResponse, out *proxy.Out) error {
	s.cout, s.coutRaw = nil, false
	st := copyStatement(e)
	if st == nil || st.Copy == nil || st.Copy.In || !st.TouchesPHI {
		// No PHI planned: the safety net checks the output field by field.
		sql, idx := copySQL(e)
		if s.cout = s.copyGuard(sql, idx, m); s.cout == nil {
			s.coutRaw = true
		}
		return out.ForwardUnchanged()
	}
	if s.p.Locked() {
		return s.fail(lockdownError(), out)
	}
	x, err := s.newCopyStream(st)
	if err != nil {
		return s.fail(asRefusal(err), out)
	}
	format := byte(0)
	if x.f.binary {
		format = 1
	}
	if m.OverallFormat != format || len(m.ColumnFormatCodes) != len(x.fields) {
		return s.fail(pgerr.Newf(pgerr.Internal, "phiproxy cannot match the COPY output of %s to its planned PHI transform", x.rel).
			WithHint("the relation's columns differ from what phiproxy planned; the catalog may have changed, retry"), out)
	}
	if s.obs != nil {
		if err := s.observeStart(e, nil); err != nil {
			return s.fail(err, out)
		}
	}
	s.cout = x
	return out.ForwardUnchanged()
}

// copyOutData transforms a CopyData of a COPY TO on a PHI relation
// (server goroutine).
func (s *session) copyOutData(m *pgproto3.CopyData, final bool, out *proxy.Out) error {
	if s.p.Locked() {
		s.cout = nil
		return s.fail(lockdownError(), out)
	}
	b, err := s.feed(s.cout, m.Data, final, CryptoDecrypt)
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

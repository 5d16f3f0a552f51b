package phi

import (
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// The safety net (DESIGN §5.5): no value that is a phiproxy envelope, in
// any form PostgreSQL prints one in, leaves the proxy in a result column
// that has no decryption planned, in COPY output, in a notification's
// payload or in an error or notice. crypto.Recognizer says what an
// envelope is: the header, Tink's prefix with the id of a loaded key and
// the shortest payload, raw or in hex, escape or base64 text, at any
// offset of the value. Values of types whose output can never hold one
// (fixed-width numbers, date/time, uuid, bool, ...) are not looked at.

// noEnvelopeType reports whether a result column of type oid can never
// carry an envelope, in text or binary format: its binary form has a
// fixed width below the shortest envelope, or its text form is made of
// digits, signs and punctuation that no envelope form decodes from (a
// long numeric is all digits: the hex form could match it). Every other
// type (bytea, text-like, json, xml, arrays, records, domains, user
// types, unknown OIDs) is checked.
func noEnvelopeType(oid uint32) bool {
	switch oid {
	case 16, // bool
		18,   // char
		20,   // int8
		21,   // int2
		23,   // int4
		26,   // oid
		27,   // tid
		28,   // xid
		29,   // cid
		700,  // float4
		701,  // float8
		790,  // money
		829,  // macaddr
		774,  // macaddr8
		869,  // inet
		650,  // cidr
		1082, // date
		1083, // time
		1114, // timestamp
		1184, // timestamptz
		1186, // interval
		1266, // timetz
		1700, // numeric
		2950, // uuid
		3220, // pg_lsn
		5069, // xid8
		24,   // regproc
		2202, // regprocedure
		2203, // regoper
		2204, // regoperator
		2205, // regclass
		2206, // regtype
		4096, // regrole
		4089, // regnamespace
		3734, // regconfig
		3769: // regdictionary
		return true
	}
	return false
}

// carriesEnvelope reports whether v, the value of result column i, holds
// an envelope. types are the columns' type OIDs from the RowDescription
// (nil when unknown: every column is checked).
func (s *session) carriesEnvelope(types []uint32, i int, v []byte) bool {
	if i < len(types) && noEnvelopeType(types[i]) {
		return false
	}
	return crypto.MayContain(v) && s.p.keys.Recognizer().Contains(v)
}

// functionResult is the safety net for the fast-path FunctionCall
// protocol: its result has no type the proxy knows, so it is checked as
// any value is.
func (s *session) functionResult(m *pgproto3.FunctionCallResponse, out *proxy.Out) error {
	if m.Result != nil && s.carriesEnvelope(nil, 0, m.Result) {
		return s.fail(pgerr.New(pgerr.Internal, "phiproxy refused to return ciphertext as a function call's result").
			WithHint("the value carries a PHI envelope but phiproxy planned no decryption for it; select the configured PHI column itself"), out)
	}
	return out.ForwardUnchanged()
}

// explainRow forwards a row of EXPLAIN output with every envelope in it
// (the encrypted constants of the plan: Filter: (ssn = '\x5048…'::bytea))
// replaced by <encrypted>: a plan is text for people, not a value to
// decrypt, so EXPLAIN stays usable on statements over PHI.
func (s *session) explainRow(m *pgproto3.DataRow, out *proxy.Out) error {
	rec := s.p.keys.Recognizer()
	changed := false
	for i, v := range m.Values {
		if v == nil || !crypto.MayContain(v) {
			continue
		}
		if r, ok := rec.Redact(string(v)); ok {
			m.Values[i], changed = []byte(r), true
		}
	}
	if !changed {
		return out.ForwardUnchanged()
	}
	return out.Forward(m)
}

// fieldTypes appends the type OIDs of fields to dst.
func fieldTypes(dst []uint32, fields []pgproto3.FieldDescription) []uint32 {
	for _, f := range fields {
		dst = append(dst, f.DataTypeOID)
	}
	return dst
}

// rememberTypes keeps the result column types of a RowDescription for
// the DataRows it describes (server goroutine): the next rows of a Query,
// or the Executes of a described statement or portal.
func (s *session) rememberTypes(e *entry, m *pgproto3.RowDescription) {
	switch e.kind {
	case entryQuery:
		s.qtypes = fieldTypes(s.qtypes[:0], m.Fields)
	case entryDescribe:
		ps := e.ps
		if e.describe != 'S' {
			ps = e.portal.ps
		}
		if ps != nil {
			ps.types = fieldTypes(ps.types[:0], m.Fields)
		}
	}
}

// executeTypes are the result column types of an Execute's rows, nil if
// its statement was never described.
func executeTypes(e *entry) []uint32 {
	if e.portal.ps != nil {
		return e.portal.ps.types
	}
	return nil
}

// redactError replaces each envelope in the fields of a server error or
// notice with "<encrypted>" (a unique violation's DETAIL prints the key,
// a NOT NULL or CHECK violation the failing row). It reports whether it
// changed anything.
func (s *session) redactError(m *pgproto3.ErrorResponse) bool {
	rec := s.p.keys.Recognizer()
	changed := false
	for _, f := range []*string{&m.Message, &m.Detail, &m.Hint, &m.Where, &m.InternalQuery,
		&m.SchemaName, &m.TableName, &m.ColumnName, &m.DataTypeName, &m.ConstraintName, &m.Routine, &m.File} {
		if *f == "" || !crypto.MayContain([]byte(*f)) {
			continue
		}
		if r, ok := rec.Redact(*f); ok {
			*f, changed = r, true
		}
	}
	for k, v := range m.UnknownFields {
		if crypto.MayContain([]byte(v)) {
			if r, ok := rec.Redact(v); ok {
				m.UnknownFields[k], changed = r, true
			}
		}
	}
	return changed
}

// asyncMessage handles the messages that may arrive at any time: a notice
// or a notification is redacted, not refused (there is no statement to
// fail).
func (s *session) asyncMessage(msg pgproto3.BackendMessage, out *proxy.Out) (bool, error) {
	switch m := msg.(type) {
	case *pgproto3.NoticeResponse:
		if s.redactError((*pgproto3.ErrorResponse)(m)) {
			return true, out.Forward(m)
		}
		return true, out.ForwardUnchanged()
	case *pgproto3.NotificationResponse:
		if crypto.MayContain([]byte(m.Payload)) {
			if r, ok := s.p.keys.Recognizer().Redact(m.Payload); ok {
				m.Payload = r
				return true, out.Forward(m)
			}
		}
		return true, out.ForwardUnchanged()
	}
	return false, nil
}

// parameterStatus forwards a setting's new value with any envelope in it
// redacted (set_config('application_name', encode(ssn, 'hex'), false)
// reports the ciphertext).
func (s *session) parameterStatus(m *pgproto3.ParameterStatus, out *proxy.Out) error {
	if crypto.MayContain([]byte(m.Value)) {
		if r, ok := s.p.keys.Recognizer().Redact(m.Value); ok {
			m.Value = r
			return out.Forward(m)
		}
	}
	return out.ForwardUnchanged()
}

// copyGuard returns the stream that checks the output of a COPY TO
// STDOUT phiproxy planned no decryption for, field by field, or nil if
// the COPY's options cannot be known (then copyGuardMessage checks each
// CopyData whole). sql is the text the COPY was sent in and idx its
// statement's index there.
func (s *session) copyGuard(sql string, idx int, m *pgproto3.CopyOutResponse) *copyStream {
	f, ok := copyOutFormat(sql, idx)
	if !ok || f.binary != (m.OverallFormat == 1) {
		return nil
	}
	c := &copyStream{f: f, rel: "a COPY", rec: s.p.keys.Recognizer()}
	c.fields = make([]copyField, len(m.ColumnFormatCodes))
	for i := range c.fields {
		c.fields[i].name = "number " + strconv.Itoa(i+1)
	}
	return c
}

// copyGuardMessage is the safety net for COPY output whose options are
// unknown: the CopyData whole.
func (s *session) copyGuardMessage(m *pgproto3.CopyData, out *proxy.Out) error {
	if crypto.MayContain(m.Data) && s.p.keys.Recognizer().Contains(m.Data) {
		return s.fail(copySafetyErr("", ""), out)
	}
	return out.ForwardUnchanged()
}

func copySafetyErr(column, rel string) *pgerr.Error {
	msg := "phiproxy refused to return ciphertext in COPY output"
	if column != "" {
		msg += " column " + column
	}
	return pgerr.New(pgerr.Internal, msg).
		WithHint("the value carries a PHI envelope but is not a configured PHI column; copy the configured PHI column itself")
}

// copyOutFormat reads the row syntax of statement idx of sql, a COPY ...
// TO STDOUT, with PostgreSQL's parser.
func copyOutFormat(sql string, idx int) (copyFormat, bool) {
	tree, err := pg.Parse(sql)
	if err != nil || idx < 0 || idx >= len(tree.Stmts) {
		return copyFormat{}, false
	}
	cs := tree.Stmts[idx].Stmt.GetCopyStmt()
	if cs == nil || cs.IsFrom {
		return copyFormat{}, false
	}
	// Only what shapes a row: the other options are the server's to judge.
	all := rewrite.CopyOptions(cs)
	c := &rewrite.Copy{Format: all.Format, Options: map[string]string{}}
	for _, name := range []string{"delimiter", "null", "quote", "escape", "header"} {
		if v, ok := all.Options[name]; ok {
			c.Options[name] = v
		}
	}
	f, err := parseCopyFormat(c, "")
	return f, err == nil
}

// clientSafe keeps phiproxy's own bug reports away from clients: an
// internal error whose message reports a bug ("BUG: …", an impossible
// state reached on input a user typed) becomes a generic XX000; the
// original stays as its cause.
func clientSafe(pe *pgerr.Error) *pgerr.Error {
	if pe.Code != pgerr.Internal || !strings.HasPrefix(pe.Message, "BUG") {
		return pe
	}
	return pgerr.New(pgerr.Internal, "phiproxy cannot handle this statement").
		WithHint("this is a phiproxy bug, please report it with the statement's shape (not its values); rephrasing the statement may avoid it").
		WithCause(pe)
}

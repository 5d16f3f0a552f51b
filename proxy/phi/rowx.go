package phi

import (
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/column"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/policy"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// The result transform: what the proxy does to each row of a statement
// that returns PHI columns — decrypt, mask, refuse (lockdown, a decision
// turned to deny, a row of the wrong shape) — and the caches that reuse
// it across statements.

// colX is the transform of one PHI output column.
type colX struct {
	col    rewrite.PHIColumn
	cipher *crypto.Cipher // nil: the key is not loaded (fails closed)
	format int16
	// What RowDescription reports for the column: the logical type's
	// OID, size and modifier (worked out once, not per statement).
	oid    uint32
	size   int16
	typmod int32
	// mask is the policy's access: Plaintext, a mask, or Deny (a row
	// through it fails the statement: the decision changed after the
	// statement was admitted).
	mask policy.Access
}

// rowX is the result transform of a statement: cols[i] is the transform
// of output column i, nil when the column carries no PHI. epoch is the
// decision epoch it was built under and results what it was built from,
// to rebuild it when the epoch moves on (fresh).
type rowX struct {
	cols    []*colX
	epoch   uint64
	results []rewrite.Result
	// redact are the statement's Redact columns: envelopes in them are
	// replaced by <encrypted> rather than refused.
	redact []int
	// locked: built while lockdown was on; it decrypts nothing, a row
	// through it fails the statement.
	locked bool
	// masks are the policy's accesses of results it was built with.
	masks []policy.Access
}

func (x *rowX) redacts(i int) bool {
	return x != nil && slices.Contains(x.redact, i)
}

func (x *rowX) at(i int) *colX {
	if x == nil || i >= len(x.cols) {
		return nil
	}
	return x.cols[i]
}

func (s *session) newRowX(results []rewrite.Result, format func(int) int16, masks []policy.Access) *rowX {
	if len(results) == 0 {
		return nil
	}
	n := 0
	for _, r := range results {
		n = max(n, r.Position+1)
	}
	x := &rowX{cols: make([]*colX, n), epoch: s.p.epoch.Load(), results: results, locked: s.p.Locked(), masks: slices.Clone(masks)}
	for i, r := range results {
		c, _ := s.p.keys.Cipher(r.Column.Key)
		mask := policy.Plaintext
		if i < len(masks) {
			mask = masks[i]
		}
		x.cols[r.Position] = &colX{col: r.Column, cipher: c, format: format(r.Position), mask: mask,
			oid: codec.OID(r.Column.Type), size: typeSize(r.Column.Type), typmod: codec.Typmod(r.Column.Type)}
	}
	return x
}

// queryX returns the result transform of a Query's statement for the
// formats of its RowDescription. The last few built are reused while the
// results are the same (the same plan's), in the same formats, under the
// same ciphers: a workload repeats its statements.
func (s *session) queryX(results []rewrite.Result, fields []pgproto3.FieldDescription) *rowX {
	if len(results) == 0 {
		return nil
	}
	format := func(i int) int16 {
		if i < len(fields) {
			return fields[i].Format
		}
		return codec.TextFormat
	}
	masks := s.masksFor(s.p.cur.Load(), results, &s.masksServer)
	for i := range s.queryXs {
		c := &s.queryXs[i]
		if c.x != nil && len(c.results) == len(results) && &c.results[0] == &results[0] && s.current(c.x, format) && sameMasks(c.x.masks, masks) {
			return c.x
		}
	}
	x := s.newRowX(results, format, masks)
	s.queryXs[s.queryXNext] = cachedX{results: results, x: x}
	s.queryXNext = (s.queryXNext + 1) % len(s.queryXs)
	return x
}

// cachedX is a result transform built for a Query (see queryX).
type cachedX struct {
	results []rewrite.Result
	x       *rowX
}

// current reports whether x has the given formats, the keyring's
// current ciphers and the current decision epoch.
func (s *session) current(x *rowX, format func(int) int16) bool {
	if x.epoch != s.p.epoch.Load() {
		return false
	}
	for i, c := range x.cols {
		if c == nil {
			continue
		}
		if cur, _ := s.p.keys.Cipher(c.col.Key); cur != c.cipher || format(i) != c.format {
			return false
		}
	}
	return true
}

// typeSize is pg_type.typlen of a logical type, for RowDescription.
func typeSize(t string) int16 {
	switch config.BaseType(t) {
	case "int4", "date":
		return 4
	case "int8", "timestamp", "timestamptz":
		return 8
	case "bool":
		return 1
	case "uuid":
		return 16
	}
	return -1
}

// row decrypts the PHI fields of a DataRow into the client's format and
// applies the safety net to every other field.
func (s *session) row(x *rowX, names []string, types []uint32, m *pgproto3.DataRow, out *proxy.Out) error {
	if x != nil && x.locked {
		return s.fail(lockdownError(), out)
	}
	if types != nil && len(m.Values) != len(types) {
		// A misbehaving upstream: decrypting by position would put a
		// value in the wrong column.
		return s.fail(pgerr.Newf(pgerr.ProtocolViolation, "the server sent a row of %d fields for a result of %d columns", len(m.Values), len(types)), out)
	}
	buf := s.sbuf[:0]
	offs := s.soffs[:0]
	cdSet := false
	for i, v := range m.Values {
		if v == nil {
			continue
		}
		c := x.at(i)
		if c == nil && x.redacts(i) && crypto.MayContain(v) {
			if r, ok := s.p.keys.Recognizer().Redact(string(v)); ok {
				if s.carriesEnvelope(nil, i, []byte(r)) {
					return s.fail(safetyErr(columnName(names, i)), out)
				}
				start := len(buf)
				buf = append(buf, r...)
				offs = append(offs, i, start, len(buf))
				continue
			}
		}
		if c == nil {
			if s.carriesEnvelope(types, i, v) {
				return s.fail(safetyErr(columnName(names, i)), out)
			}
			continue
		}
		ct, err := s.dec.DecodeStored(v, c.format)
		if err != nil || c.cipher == nil {
			return s.fail(decryptErr(c.col.Ident), out)
		}
		if !cdSet {
			s.dec.Codec, cdSet = s.codec(), true
		}
		start := len(buf)
		if c.mask == policy.Deny {
			clear(buf)
			return s.fail(pgerr.Newf(pgerr.InsufficientPrivilege, "permission denied for column %s: the policy no longer lets your role read it", c.col.Ident), out)
		}
		buf, err = s.dec.AppendOpen(buf, column.Column{Ident: c.col.Ident, Type: c.col.Type, Cipher: c.cipher, Mask: c.mask}, c.format, ct)
		if err != nil {
			clear(buf)
			return s.fail(decryptErr(c.col.Ident), out)
		}
		offs = append(offs, i, start, len(buf))
	}
	if len(offs) == 0 {
		// Nothing decrypted: the row goes on as it arrived.
		return out.ForwardUnchanged()
	}
	for k := 0; k < len(offs); k += 3 {
		m.Values[offs[k]] = buf[offs[k+1]:offs[k+2]:offs[k+2]]
	}
	err := out.Forward(m)
	clear(buf) // the decrypted values do not outlive the message
	if cap(buf) > 1<<20 {
		buf = nil // do not keep a huge value's buffer for the session's life
	}
	s.sbuf, s.soffs = buf[:0], offs[:0]
	return err
}

func decryptErr(ident string) *pgerr.Error {
	return pgerr.Newf(pgerr.Internal, "phiproxy cannot decrypt a value of PHI column %s", ident).
		WithHint("the stored value is not a valid ciphertext for this column's key (written around the proxy, copied from another column, or its key was retired)")
}

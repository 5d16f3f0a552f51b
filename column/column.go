package column

import (
	"encoding/hex"
	"github.com/phiproxy/phiproxy/policy"
	"slices"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/crypto"
	"github.com/phiproxy/phiproxy/pgerr"
)

// Column is what the encoder needs of one PHI column.
type Column struct {
	// Ident is schema.table.column, for error messages.
	Ident string
	// Type is the logical type with its modifier (config's canonical
	// spelling, as rewrite.PHIColumn.Type).
	Type string
	// Cipher is the column's key; nil when the keyring has none, and then
	// every call fails.
	Cipher *crypto.Cipher
	// Mask, when it is one, is applied to the decrypted value before it
	// is encoded for the client (AppendOpen): the policy's decision.
	Mask policy.Access
}

// Input says how a value to seal arrives.
type Input struct {
	// Format is codec.TextFormat or codec.BinaryFormat.
	Format int16
	// Declared is the type OID the client declared for a parameter (Parse),
	// 0 when none: a binary value of another type is coerced as PostgreSQL
	// would (codec.AppendCanonicalFrom). Array elements ignore it.
	Declared uint32
	// Coercion is the explicit cast around the value and whether it is
	// assigned to the column or compared with it (rewrite.Slot and
	// rewrite.Param's Cast and Assign). COPY FROM assigns.
	Coercion codec.Coercion
}

// Encoder seals and opens the values of PHI columns. The zero value is a
// session in TimeZone UTC.
type Encoder struct {
	// Codec converts with the session's TimeZone.
	Codec codec.Codec

	plain []byte   // canonical plaintexts of the current call: cleared before it returns
	env   []byte   // the envelopes SealArray returns
	ends  []int    // their ends in env, -1 for NULL
	elems [][]byte // SealArray's result
	hex   []byte   // DecodeStored's result
	mask  []byte   // a masked plaintext of the current call: cleared before it returns
}

// AppendSeal canonicalises src (a value of col in in's form, not NULL),
// encrypts it under col's key and appends the envelope to dst.
func (e *Encoder) AppendSeal(dst []byte, col Column, in Input, src []byte) ([]byte, error) {
	return e.seal(dst, col, in, 0, src)
}

// AppendSealString is AppendSeal for a value held as a string (a literal
// of the planned SQL): it is copied into the Encoder's scratch, which is
// cleared with the plaintext, rather than converted with an allocation.
func (e *Encoder) AppendSealString(dst []byte, col Column, in Input, src string) ([]byte, error) {
	e.plain = e.grow(len(src))
	e.plain = append(e.plain, src...)
	n := len(e.plain)
	return e.seal(dst, col, in, n, e.plain[:n:n])
}

// seal canonicalises src after the first n bytes of e.plain (which hold
// a copy of src when n > 0) and appends the envelope to dst.
func (e *Encoder) seal(dst []byte, col Column, in Input, n int, src []byte) ([]byte, error) {
	defer e.wipe()
	if col.Cipher == nil {
		return dst, noKey(col)
	}
	canon, err := e.canonical(n, col, in.Coercion, in.Declared, in.Format, src)
	if err != nil {
		return dst, err
	}
	return col.Cipher.AppendEncrypt(dst, canon)
}

// canonical appends the canonical form of src to e.plain[:n] and returns
// it; if the scratch had to grow, the old one is cleared.
func (e *Encoder) canonical(n int, col Column, co codec.Coercion, declared uint32, format int16, src []byte) ([]byte, error) {
	old := e.plain[:n]
	out, err := e.Codec.AppendBound(old, col.Type, co, declared, format, src)
	if err != nil {
		clear(old[:cap(old)]) // a partial plaintext may be there
		return nil, codec.WithColumn(err, col.Ident)
	}
	if cap(out) > 0 && (cap(old) == 0 || &out[:1][0] != &old[:1][0]) {
		clear(old[:cap(old)]) // grown: the old buffer is dropped
		e.plain = out[:0]
	}
	return out[n:], nil
}

// grow returns e.plain emptied with room for n bytes; a buffer too small
// is cleared before it is replaced.
func (e *Encoder) grow(n int) []byte {
	if cap(e.plain) < n {
		clear(e.plain[:cap(e.plain)])
		e.plain = make([]byte, 0, n+n/2+64)
	}
	return e.plain[:0]
}

// wipe clears the plaintext scratch, all of its capacity (the codec may
// have written past the end of what it returned). A scratch grown by a
// large value is dropped once cleared, so that clearing stays cheap for
// the small values that follow.
func (e *Encoder) wipe() {
	clear(e.plain[:cap(e.plain)])
	e.plain = e.plain[:0]
	if cap(e.plain) > 64<<10 {
		e.plain = nil
	}
}

// SealArray splits an array value of col's logical type (for col =
// ANY(…)) and seals each element: the result has an envelope per element
// and nil for a NULL element, flattened as ANY sees them. It is valid
// until the next call. in.Declared is not used: the elements are of the
// array's element type.
func (e *Encoder) SealArray(col Column, in Input, src []byte) ([][]byte, error) {
	raw, err := codec.SplitArray(col.Type, in.Format, src)
	if in.Format == codec.TextFormat {
		// The text parser unescaped each element into a copy.
		defer func() {
			for _, r := range raw {
				clear(r)
			}
		}()
	}
	if err != nil {
		return nil, codec.WithColumn(err, col.Ident)
	}
	defer e.wipe()
	if col.Cipher == nil && len(raw) > 0 {
		return nil, noKey(col)
	}
	env, ends := e.env[:0], e.ends[:0]
	for _, r := range raw {
		if r == nil {
			ends = append(ends, -1)
			continue
		}
		canon, err := e.canonical(0, col, in.Coercion, 0, in.Format, r)
		if err == nil {
			env, err = col.Cipher.AppendEncrypt(env, canon)
		}
		clear(canon)
		if err != nil {
			e.env, e.ends = env[:0], ends[:0]
			return nil, err
		}
		ends = append(ends, len(env))
	}
	elems := e.elems[:0]
	start := 0
	for _, end := range ends {
		if end < 0 {
			elems = append(elems, nil)
			continue
		}
		elems = append(elems, env[start:end:end])
		start = end
	}
	e.env, e.ends, e.elems = env[:0], ends[:0], elems[:0]
	return elems, nil
}

// AppendOpen decrypts envelope with col's key and appends the value in
// the client's format to dst. Errors are *pgerr.Error naming the column
// (XX001 when the envelope does not authenticate or the plaintext is not
// a canonical value), never the value.
func (e *Encoder) AppendOpen(dst []byte, col Column, format int16, envelope []byte) ([]byte, error) {
	if col.Cipher == nil {
		return dst, noKey(col)
	}
	pt, err := col.Cipher.Decrypt(envelope)
	if err != nil {
		return dst, err
	}
	if col.Mask.Masked() {
		m := policy.AppendMask(e.mask[:0], col.Mask, col.Type, pt)
		clear(pt)
		pt, e.mask = m, m[:0]
		defer clear(m)
	}
	out, err := e.Codec.AppendEncode(dst, col.Type, format, pt)
	clear(pt)
	if err != nil {
		clear(dst[len(dst):cap(dst)]) // a partial value may be there
		return dst, codec.WithColumn(err, col.Ident)
	}
	return out, nil
}

// DecodeStored returns the envelope in a bytea value as the server sends
// it in format: binary as is, text in hex (`\x…`, decoded into the
// Encoder's scratch, valid until the next call) or escape form
// (codec.DecodeBytea).
func (e *Encoder) DecodeStored(v []byte, format int16) ([]byte, error) {
	if format == codec.TextFormat && len(v) >= 2 && v[0] == '\\' && v[1] == 'x' && len(v)%2 == 0 {
		n := (len(v) - 2) / 2
		b := slices.Grow(e.hex[:0], n)[:n]
		if _, err := hex.Decode(b, v[2:]); err == nil {
			if cap(b) <= 1<<20 { // do not keep a huge value's buffer
				e.hex = b[:0]
			}
			return b, nil
		}
	}
	return codec.DecodeBytea(v, format)
}

// Wiped reports whether the Encoder's plaintext scratch is all zero, as
// it must be between calls. Tests assert it after every path.
func (e *Encoder) Wiped() bool {
	for _, b := range e.plain[:cap(e.plain)] {
		if b != 0 {
			return false
		}
	}
	return true
}

func noKey(col Column) error {
	return pgerr.Newf(pgerr.Internal, "phiproxy has no key for PHI column %s", col.Ident)
}

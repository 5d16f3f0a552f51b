package crypto

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
)

// Recognizer finds phiproxy envelopes made by the loaded keys in values on
// their way to a client, in every form PostgreSQL can print one in: the
// raw bytes (binary bytea, binary arrays and records), bytea hex output
// (`\x504801…`, any case, any number of backslashes before the x, or none
// as encode(…, 'hex') writes it), bytea escape output (`PH\001\001…`,
// with its backslashes doubled any number of times by array, record, json
// or COPY quoting) and base64 (encode(…, 'base64'), line breaks included,
// for an envelope at a 3-byte boundary of the encoded bytes).
//
// A match needs the whole start of a real envelope: the 3-byte header,
// Tink's output prefix 0x01 with the id of a key of a loaded keyset
// (present or retired), and at least the shortest Tink payload (16 bytes).
// An innocent value matches at a given offset with a probability of about
// k·2^-64 for k loaded key ids (header, prefix byte and key id are 8 fixed
// bytes), and only if the 16 bytes after them decode in the same form.
//
// A Recognizer is immutable and safe for concurrent use.
type Recognizer struct {
	ids map[uint32]struct{}
}

// NewRecognizer returns a Recognizer for envelopes made by the given key
// ids.
func NewRecognizer(ids ...uint32) *Recognizer {
	r := &Recognizer{ids: make(map[uint32]struct{}, len(ids))}
	for _, id := range ids {
		r.ids[id] = struct{}{}
	}
	return r
}

// Known reports whether id is the id of a loaded key.
func (r *Recognizer) Known(id uint32) bool {
	_, ok := r.ids[id]
	return ok
}

// IsEnvelope reports whether b starts with an envelope of a loaded key
// (the raw form).
func (r *Recognizer) IsEnvelope(b []byte) bool {
	return IsEnvelope(b) && r.Known(binary.BigEndian.Uint32(b[HeaderLen+1:]))
}

// The anchors the forms are found by: none of their bytes is ever escaped
// by PostgreSQL's output functions or COPY.
var (
	anchorRaw    = []byte("PH")     // raw and escape forms
	anchorHex    = []byte("504801") // hex form: digits only, so any case
	anchorBase64 = []byte("UEgB")   // base64 of "PH\x01"
)

// MayContain reports whether b holds one of the anchors an envelope in
// any form starts with: a cheap first test before a value is de-escaped
// and given to Contains.
func MayContain(b []byte) bool {
	return bytes.Contains(b, anchorRaw) || bytes.Contains(b, anchorHex) || bytes.Contains(b, anchorBase64)
}

// Contains reports whether b holds an envelope of a loaded key in any of
// its forms, at any offset.
func (r *Recognizer) Contains(b []byte) bool {
	_, _, ok := r.Find(b)
	return ok
}

// Find returns the first envelope in b: where its text starts and where
// the text that may belong to it ends. For the hex and base64 forms the
// end is the end of the run of digits; for the raw and escape forms,
// whose bytes cannot be told from what follows, it is the end of b.
func (r *Recognizer) Find(b []byte) (start, end int, ok bool) {
	if r == nil || len(r.ids) == 0 {
		return 0, 0, false
	}
	start = -1
	better := func(s, e int) {
		if start < 0 || s < start {
			start, end = s, e
		}
	}
	for i := 0; ; {
		j := bytes.Index(b[i:], anchorHex)
		if j < 0 {
			break
		}
		k := i + j
		if e, ok := r.hexAt(b, k); ok {
			better(hexStart(b, k), e)
			break
		}
		i = k + 1
	}
	for i := 0; start < 0 || i < start; {
		j := bytes.Index(b[i:], anchorRaw)
		if j < 0 {
			break
		}
		k := i + j
		if r.rawAt(b, k) || r.escapeAt(b, k) {
			better(k, len(b))
			break
		}
		i = k + 1
	}
	for i := 0; start < 0 || i < start; {
		j := bytes.Index(b[i:], anchorBase64)
		if j < 0 {
			break
		}
		k := i + j
		if e, ok := r.base64At(b, k); ok {
			better(k, e)
			break
		}
		i = k + 1
	}
	return start, end, start >= 0
}

// Redact returns s with each envelope Find finds replaced by
// "<encrypted>", and whether there was one.
func (r *Recognizer) Redact(s string) (string, bool) {
	b := []byte(s)
	var out []byte
	changed := false
	for {
		start, end, ok := r.Find(b)
		if !ok {
			break
		}
		out = append(out, b[:start]...)
		out = append(out, EnvelopeRedacted...)
		b = b[end:]
		changed = true
	}
	if !changed {
		return s, false
	}
	return string(append(out, b...)), true
}

// EnvelopeRedacted is what Redact puts in place of an envelope.
const EnvelopeRedacted = "<encrypted>"

// head checks the decoded first MinEnvelopeLen bytes of a candidate.
func (r *Recognizer) head(h *[MinEnvelopeLen]byte) bool {
	return r.IsEnvelope(h[:])
}

func (r *Recognizer) rawAt(b []byte, k int) bool {
	return r.IsEnvelope(b[k:])
}

// hexAt decodes the hex form at b[k:] (the anchor) and returns the end of
// its run of hex digits.
func (r *Recognizer) hexAt(b []byte, k int) (int, bool) {
	if len(b)-k < 2*MinEnvelopeLen {
		return 0, false
	}
	var h [MinEnvelopeLen]byte
	if _, err := hex.Decode(h[:], b[k:k+2*MinEnvelopeLen]); err != nil || !r.head(&h) {
		return 0, false
	}
	e := k + 2*MinEnvelopeLen
	for e < len(b) && isHex(b[e]) {
		e++
	}
	return e, true
}

// hexStart extends the hex form at k back over its `\x` and the
// backslashes quoting added before it.
func hexStart(b []byte, k int) int {
	if k >= 2 && (b[k-1] == 'x' || b[k-1] == 'X') && b[k-2] == '\\' {
		k -= 2
		for k > 0 && b[k-1] == '\\' {
			k--
		}
	}
	return k
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// escapeAt decodes bytea escape output at b[k:] ("PH" then the version
// byte as a backslash escape). byteaout writes bytes 0x20–0x7e other than
// the backslash as themselves, the backslash as two backslashes and every
// other byte as a backslash and three octal digits; each level of quoting
// (an array or record literal, json, COPY text) doubles the backslashes,
// so the version byte's escape says how many stand for one.
func (r *Recognizer) escapeAt(b []byte, k int) bool {
	i := k + 2
	n := 0
	for i+n < len(b) && b[i+n] == '\\' {
		n++
	}
	if n == 0 {
		return false
	}
	var h [MinEnvelopeLen]byte
	h[0], h[1] = 'P', 'H'
	for o := 2; o < MinEnvelopeLen; o++ {
		if i >= len(b) {
			return false
		}
		if b[i] != '\\' {
			h[o] = b[i]
			i++
			continue
		}
		run := 0
		for i+run < len(b) && b[i+run] == '\\' {
			run++
		}
		switch {
		case run >= 2*n:
			h[o] = '\\'
			i += 2 * n
		case run == n && i+n+3 <= len(b) && b[i+n] <= '3' && isOctal(b[i+n]) && isOctal(b[i+n+1]) && isOctal(b[i+n+2]):
			h[o] = (b[i+n]-'0')<<6 | (b[i+n+1]-'0')<<3 | (b[i+n+2] - '0')
			i += n + 3
		case run < n && i+run < len(b):
			// A character quoted by an outer level (a double quote in an
			// array or json string).
			h[o] = b[i+run]
			i += run + 1
		default:
			return false
		}
	}
	return r.head(&h)
}

// base64At decodes base64 at b[k:] (line breaks skipped, as encode()
// inserts them) and returns the end of the run of base64 text.
func (r *Recognizer) base64At(b []byte, k int) (int, bool) {
	const need = MinEnvelopeLen / 3 * 4
	var enc [need]byte
	n, e := 0, k
	for ; e < len(b) && n < need; e++ {
		c := b[e]
		if c == '\n' || c == '\r' {
			continue
		}
		enc[n] = c
		n++
	}
	if n < need {
		return 0, false
	}
	var h [MinEnvelopeLen]byte
	if _, err := base64.StdEncoding.Decode(h[:], enc[:]); err != nil || !r.head(&h) {
		return 0, false
	}
	for e < len(b) && isBase64(b[e]) {
		e++
	}
	return e, true
}

func isBase64(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=' || c == '\n' || c == '\r'
}

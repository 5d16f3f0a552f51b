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
	anchorRaw    = []byte(EnvelopeHeader[:2]) // raw and escape forms ("PH")
	anchorHex    = []byte(headerHex)          // hex form ("504801"): digits only, so any case
	anchorBase64 = []byte(headerBase64)       // base64 form ("UEgB")
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
	return r.find(b, MinEnvelopeLen)
}

// prefixLen is the header and Tink's prefix: the part of an envelope that
// names its key.
const prefixLen = HeaderLen + tinkPrefixLen

// find is Find for envelopes of which need bytes are present.
func (r *Recognizer) find(b []byte, need int) (start, end int, ok bool) {
	if r == nil || len(r.ids) == 0 {
		return 0, 0, false
	}
	start = -1
	better := func(s, e int) {
		if start < 0 || s < start {
			start, end = s, e
		}
	}
	// scan tries at on each place anchor stands in b, before the envelope
	// found so far, and keeps the first envelope at finds.
	scan := func(anchor []byte, at func(k int) (s, e int, ok bool)) {
		for i := 0; start < 0 || i < start; {
			j := bytes.Index(b[i:], anchor)
			if j < 0 {
				return
			}
			k := i + j
			if s, e, ok := at(k); ok {
				better(s, e)
				return
			}
			i = k + 1
		}
	}
	scan(anchorHex, func(k int) (int, int, bool) {
		e, ok := r.hexAt(b, k, need)
		return hexStart(b, k), e, ok
	})
	scan(anchorRaw, func(k int) (int, int, bool) {
		return k, len(b), r.rawAt(b, k, need) || r.escapeAt(b, k, need)
	})
	scan(anchorBase64, func(k int) (int, int, bool) {
		e, ok := r.base64At(b, k, need)
		return k, e, ok
	})
	return start, end, start >= 0
}

// Redact returns s with each envelope replaced by "<encrypted>", and
// whether there was one. It is meant for server messages, which truncate
// long values (a failing row shows 64 bytes of each), so it needs only
// the envelope's first 8 bytes in one of its forms: the header and Tink's
// prefix with a loaded key id.
func (r *Recognizer) Redact(s string) (string, bool) {
	b := []byte(s)
	var out []byte
	changed := false
	for {
		start, end, ok := r.find(b, prefixLen)
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

// head checks h, the decoded first bytes of a candidate (at least
// prefixLen of them).
func (r *Recognizer) head(h []byte) bool {
	return h[0] == EnvelopeHeader[0] && h[1] == EnvelopeHeader[1] && h[2] == EnvelopeHeader[2] &&
		h[HeaderLen] == tinkStartByte && r.Known(binary.BigEndian.Uint32(h[HeaderLen+1:]))
}

func (r *Recognizer) rawAt(b []byte, k, need int) bool {
	return len(b)-k >= need && r.head(b[k:])
}

// hexAt decodes the hex form at b[k:] (the anchor) and returns the end of
// its run of hex digits.
func (r *Recognizer) hexAt(b []byte, k, need int) (int, bool) {
	if len(b)-k < 2*need {
		return 0, false
	}
	var h [MinEnvelopeLen]byte
	if _, err := hex.Decode(h[:need], b[k:k+2*need]); err != nil || !r.head(h[:need]) {
		return 0, false
	}
	e := k + 2*need
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
// byte). byteaout writes bytes 0x20–0x7e other than the backslash as
// themselves, the backslash as two backslashes and every other byte as a
// backslash and three octal digits; encode(…, 'escape') escapes only the
// backslash, zero and bytes from 0x80, and leaves other bytes raw. Each
// level of quoting (an array or record literal, json, COPY text) doubles
// the backslashes: n backslashes stand for one, for n a power of two.
func (r *Recognizer) escapeAt(b []byte, k, need int) bool {
	if k+2 >= len(b) || b[k+2] != '\\' && b[k+2] != tinkStartByte {
		return false
	}
	for n := 1; n <= 16; n *= 2 {
		// A record literal also doubles each double quote.
		if r.escapeAtN(b, k, need, n, false) || r.escapeAtN(b, k, need, n, true) {
			return true
		}
	}
	return false
}

func (r *Recognizer) escapeAtN(b []byte, k, need, n int, dq bool) bool {
	var h [MinEnvelopeLen]byte
	h[0], h[1] = EnvelopeHeader[0], EnvelopeHeader[1]
	i := k + 2
	for o := 2; o < need; o++ {
		if i >= len(b) {
			return false
		}
		if b[i] != '\\' {
			h[o] = b[i]
			i++
			if dq && h[o] == '"' {
				if i >= len(b) || b[i] != '"' {
					return false
				}
				i++
			}
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
			// array or json string; in a record, doubled as well).
			h[o] = b[i+run]
			i += run + 1
			if dq && h[o] == '"' {
				if i >= len(b) || b[i] != '"' {
					return false
				}
				i++
			}
		default:
			return false
		}
		if o == HeaderLen+tinkPrefixLen-1 && !r.head(h[:prefixLen]) {
			return false // not a loaded key: stop early
		}
	}
	return r.head(h[:need])
}

// base64At decodes base64 at b[k:] (line breaks skipped, as encode()
// inserts them) and returns the end of the run of base64 text.
func (r *Recognizer) base64At(b []byte, k, need int) (int, bool) {
	chars := (need + 2) / 3 * 4
	var enc [MinEnvelopeLen / 3 * 4]byte
	n, e := 0, k
	for ; e < len(b) && n < chars; e++ {
		c := b[e]
		if c == '\n' || c == '\r' {
			continue
		}
		enc[n] = c
		n++
	}
	if n < chars {
		return 0, false
	}
	var h [MinEnvelopeLen]byte
	if _, err := base64.StdEncoding.Decode(h[:], enc[:chars]); err != nil || !r.head(h[:need]) {
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

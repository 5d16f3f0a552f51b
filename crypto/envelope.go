package crypto

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
)

// The envelope (DESIGN.md §4, a contract): "PH", a version byte, then Tink's
// output, which starts with its own 5-byte prefix (0x01 and the big-endian
// id of the key that made it).
//
// EnvelopeHeader is the one definition of the header: everything that
// writes, recognises or constrains envelopes (the cipher, the safety net's
// Recognizer, the CHECK constraint of EnvelopeCheckSQL, the proxy) uses
// it or the forms derived from it here.
const (
	// EnvelopeHeader is "PH" followed by version 1.
	EnvelopeHeader = "PH\x01"
	// HeaderLen is the length of the envelope header ("PH" + version).
	HeaderLen = len(EnvelopeHeader)
	// tinkPrefixLen is Tink's output prefix: 0x01 + 4-byte key id.
	tinkPrefixLen = 5
	tinkStartByte = 0x01
	// minTinkPayload is the shortest Tink ciphertext we produce after its
	// prefix: AES-SIV's 16-byte synthetic IV (AES-GCM adds 12 + 16 bytes).
	minTinkPayload = 16
	// MinEnvelopeLen is the length of the shortest well-formed envelope.
	MinEnvelopeLen = HeaderLen + tinkPrefixLen + minTinkPayload
)

// The header in the forms it is found in: PostgreSQL's hex bytea text
// form (`\x504801`) and base64 ("UEgB"), derived from EnvelopeHeader.
var (
	headerHex          = hex.EncodeToString([]byte(EnvelopeHeader))
	textEnvelopePrefix = `\x` + headerHex
	headerBase64       = base64.StdEncoding.EncodeToString([]byte(EnvelopeHeader))
)

// IsEnvelope reports whether b looks like a phiproxy ciphertext: the header,
// a Tink key-id prefix and at least the shortest Tink payload. It does not
// authenticate anything; it is the proxy's cheap safety net (DESIGN.md §5.5).
func IsEnvelope(b []byte) bool {
	return len(b) >= MinEnvelopeLen &&
		b[0] == EnvelopeHeader[0] && b[1] == EnvelopeHeader[1] && b[2] == EnvelopeHeader[2] &&
		b[HeaderLen] == tinkStartByte
}

// HasEnvelopeHeader reports whether b starts with the envelope header,
// whatever its length. It is a shape check: the safety net uses a
// Recognizer, which also needs a loaded key id.
func HasEnvelopeHeader(b []byte) bool {
	return len(b) >= HeaderLen &&
		b[0] == EnvelopeHeader[0] && b[1] == EnvelopeHeader[1] && b[2] == EnvelopeHeader[2]
}

// IsTextEnvelope reports whether b, a value in PostgreSQL's text format,
// begins with the envelope header in bytea hex form (`\x504801`, hex digits
// in either case). It is a shape check: the safety net uses a Recognizer,
// which finds every form at any offset and needs a loaded key id.
func IsTextEnvelope(b []byte) bool {
	if len(b) < len(textEnvelopePrefix) || b[0] != '\\' || (b[1] != 'x' && b[1] != 'X') {
		return false
	}
	for i := 2; i < len(textEnvelopePrefix); i++ {
		c := b[i]
		if c >= 'A' && c <= 'F' {
			c += 'a' - 'A'
		}
		if c != textEnvelopePrefix[i] {
			return false
		}
	}
	return true
}

// EnvelopeKeyID returns the id of the Tink key that produced envelope b, or
// false when b is not an envelope. Key ids are not secret: `keys list` shows
// them, and operators use them to find rows still under a key before
// retiring it.
func EnvelopeKeyID(b []byte) (uint32, bool) {
	if !IsEnvelope(b) {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[HeaderLen+1 : HeaderLen+tinkPrefixLen]), true
}

// KeyPrefix returns the first bytes every envelope made by key id has:
// header + Tink prefix. DBAs use it to count rows under a key, e.g.
// substring(col FROM 1 FOR 8) = '\x5048010112345678'.
func KeyPrefix(id uint32) []byte {
	p := make([]byte, 0, HeaderLen+tinkPrefixLen)
	p = append(p, EnvelopeHeader...)
	p = append(p, tinkStartByte)
	return binary.BigEndian.AppendUint32(p, id)
}

package crypto

import "log/slog"

// Redacted is what every key-holding or plaintext-holding type of this
// package logs and prints instead of its content.
const Redacted = "REDACTED"

func redacted() slog.Value { return slog.StringValue(Redacted) }

// Plaintext is a decrypted value (or one about to be encrypted). The proxy
// keeps PHI in this type wherever it might end up in a log line or an error:
// slog, fmt's %v, %s, %q, %x and %#v all print REDACTED.
type Plaintext []byte

// LogValue implements slog.LogValuer.
func (Plaintext) LogValue() slog.Value { return redacted() }

// String implements fmt.Stringer.
func (Plaintext) String() string { return Redacted }

// GoString implements fmt.GoStringer.
func (Plaintext) GoString() string { return Redacted }

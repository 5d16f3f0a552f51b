package rewrite

import (
	"github.com/phiproxy/phiproxy/pgerr"
)

// refusal is the 0A000 error for an operation ciphertext cannot support.
func refusal(msg, hint string) *pgerr.Error {
	return pgerr.New(pgerr.FeatureNotSupported, msg).WithHint(hint)
}

// Hints, shared so that the same situation always reads the same.
const (
	hintRandomized    = "a randomized column supports only projection and IS [NOT] NULL; declare it mode: deterministic to compare it for equality"
	hintDeterministic = "a deterministic column supports projection, IS [NOT] NULL, =, <>, IN, = ANY($n), joins on columns sharing its key, GROUP BY, DISTINCT and count(...); compute anything else in the application after decryption"
	hintValue         = "compare or assign it with a literal, a $n parameter, NULL, or a PHI column sharing its key"
	hintWrite         = "write a literal, a $n parameter, NULL, DEFAULT or a PHI column sharing its key"
	hintOrder         = "ciphertext has no order: sort in the application after decryption"
	hintKeys          = "columns can be compared only if they are deterministic and share a key (key: in the phi: section)"
)

package crypto

import (
	"log/slog"
	"os"
)

// Env holds every environment variable phiproxy's key handling reads. It is
// read in one place, EnvFromOS, and passed in, so tests never touch the
// process environment.
//
//	VAULT_TOKEN   token for an hcvault:// KEK (needs update on the transit
//	              key's encrypt and decrypt paths). Required with Vault.
//	VAULT_CACERT  optional PEM file of CA certificates that sign Vault's
//	              TLS certificate; the system roots are used otherwise.
//
// The HashiCorp client library itself also honours VAULT_NAMESPACE and
// VAULT_HEADERS; phiproxy sets the address (from the KEK URI) and the token
// explicitly, so VAULT_ADDR is ignored.
type Env struct {
	VaultToken  string
	VaultCACert string
}

// EnvFromOS reads Env from the process environment.
func EnvFromOS() Env {
	return Env{
		VaultToken:  os.Getenv("VAULT_TOKEN"),
		VaultCACert: os.Getenv("VAULT_CACERT"),
	}
}

// LogValue keeps the Vault token out of logs.
func (Env) LogValue() slog.Value { return redacted() }

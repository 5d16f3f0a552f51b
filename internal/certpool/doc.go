// Package certpool reads a PEM file of CA certificates into an
// x509.CertPool, for the TLS clients of phiproxy: the upstream connection
// (upstream.sslrootcert), the Kafka audit export (audit.kafka.tls.ca),
// Vault KEKs (VAULT_CACERT) and the lockdown command's admin API client.
//
// A file that holds no PEM certificate is an error rather than an empty
// pool, which would only fail later, at the handshake, with an unknown
// authority. It depends on the standard library only.
package certpool

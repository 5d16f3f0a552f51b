// Package auth terminates PostgreSQL password authentication at the proxy
// and performs it again towards the upstream server, without the proxy ever
// seeing a password. It is PgBouncer's auth_query model (DESIGN.md §5.1).
//
// Data flow for one session:
//
//  1. The proxy reads the client's StartupMessage and calls
//     [Authenticator.Authenticate] with the client-leg [pgproto3.Backend].
//     Authenticate looks the role's verifier up with the [LookupFunc] the
//     proxy supplies (auth.query over the catalog connection) and runs the
//     exchange PostgreSQL would run for that verifier:
//     SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS with tls-server-end-point
//     channel binding over the proxy's own certificate when the client leg
//     is TLS) for a SCRAM verifier, md5 for an md5 verifier. Unknown roles,
//     roles without a password and expired roles get a mock SCRAM exchange
//     with a salt derived from the user name and a per-Authenticator secret,
//     as PostgreSQL does, so the protocol does not reveal whether a role
//     exists.
//  2. For SCRAM the client's proof yields the ClientKey (ClientProof XOR
//     ClientSignature, checked by H(ClientKey) == StoredKey); for md5 the
//     stored hash is all that is needed. Either is kept in a [Credentials],
//     which redacts itself in logs.
//  3. The proxy dials upstream, sends its StartupMessage and calls
//     [Credentials.Login] with the upstream [pgproto3.Frontend]. Login
//     answers AuthenticationSASL (binding to the upstream's certificate when
//     the upstream is TLS and offers -PLUS) or AuthenticationMD5Password and
//     returns after AuthenticationOk. An upstream ErrorResponse comes back as
//     an [*UpstreamError] to be forwarded unchanged.
//  4. The proxy sends AuthenticationOk to the client, then relays
//     ParameterStatus, BackendKeyData and ReadyForQuery.
//
// Failures towards the client are *pgerr.Error values with PostgreSQL's own
// SQLSTATEs and messages (28P01 "password authentication failed for user",
// the same for an unknown role, a wrong password, a role without password
// and an expired one). A NOLOGIN role with a correct password gets 28000
// "role ... is not permitted to log in", as from PostgreSQL, either here
// (when the lookup reports CanLogin false) or from the upstream server.
//
// Nothing here logs or returns a password, a proof or a key.
package auth

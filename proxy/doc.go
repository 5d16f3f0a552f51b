// Package proxy is phiproxy's PostgreSQL front end: it accepts clients,
// terminates TLS and authentication, logs in to the upstream server, and
// relays each session between the two, with one interception point per
// session where later layers classify, rewrite and refuse statements and
// transform results.
//
// # Connection lifecycle
//
// Server.Serve accepts a connection and runs one session in its own
// goroutine. An accept that fails for want of resources (out of file
// descriptors) is retried with net/http's back-off, never fatal; a
// connection over limits.max_connections gets PostgreSQL's FATAL 53300
// "sorry, too many clients already" once its startup packet is read.
//
//  1. Startup (state Startup). The client's untyped startup packets are read
//     straight from the socket, unbuffered, so nothing sent ahead of a TLS
//     handshake can be mistaken for encrypted data. SSLRequest is answered
//     'S' and the connection upgraded with the configured certificate, or
//     'N' when client_tls.mode is disable; GSSENCRequest is answered 'N'; a
//     CancelRequest is looked up and forwarded (see Cancel) and the
//     connection closed. A StartupMessage must be protocol 3.x: a minor
//     version above 0 or "_pq_." options get a NegotiateProtocolVersion
//     down to 3.0, as PostgreSQL does; other majors get FATAL 0A000. With
//     client_tls.mode require a plaintext StartupMessage gets FATAL 28000.
//
//  2. Login. With auth.mode terminate (the default) package proxy/auth runs
//     the SCRAM-SHA-256(-PLUS) or md5 exchange with the client against the
//     verifier auth.query returns over the catalog connection; the proxy
//     then dials upstream (TLS per upstream.sslmode, with libpq's meaning of
//     each mode) and logs in with the credentials recovered from the
//     exchange. With auth.mode relay the upstream's own authentication
//     requests are relayed to the client and back (SCRAM-SHA-256-PLUS
//     hidden). Either way the upstream's ParameterStatus and notices reach
//     the client unchanged (and the client's startup parameters and the
//     upstream's initial ParameterStatus values are kept in SessionInfo for
//     the Interceptor); its BackendKeyData does not: the client gets the
//     upstream backend's real process ID with a random secret of the
//     proxy's, registered in the Server's cancel map, and ReadyForQuery.
//
//  3. Relay (states Idle, InTx, FailedTx, SkipTillSync, CopyIn, CopyOut).
//     pumpClient (client → server, on the accepting goroutine) and
//     pumpServer (server → client, on a second goroutine) frame messages
//     from a buffered reader without decoding them and copy the raw bytes
//     into the other leg's buffered writer; they flush only when their
//     reader has no more input buffered, so a pipelined batch or a result
//     set leaves in as few writes as it arrived in. The type byte of each
//     message drives the session's State through one transition function
//     (ReadyForQuery's status, CopyInResponse, CopyOutResponse,
//     ErrorResponse during an extended-protocol batch), at no decoding cost.
//
//     An Interceptor, when one is installed for the session, selects the
//     message types it wants per direction; only those are decoded (with
//     pgproto3's message types, into per-session flyweights) and handed to
//     it, with an Out to forward, rewrite, drop, inject or refuse. Without
//     an Interceptor the relay is a pure byte copy that allocates nothing
//     per message. The Interceptor is built after login (and after the
//     role memberships are resolved) and lives as long as the session:
//     SessionInfo.Context is its lifetime, SessionEnd its last call.
//     A session hook (WithSessionHook: session metrics, package
//     proxy/admin) sees every logged-in session, pass-through ones too,
//     and its end.
//
//     Automatic logoff (idle.go): with limits.idle_session_timeout or
//     limits.idle_in_transaction_timeout set, a session left idle after a
//     ReadyForQuery ends with PostgreSQL's FATAL 57P05 or 25P03; one timer
//     per session, so the relay only loads an atomic per client message.
//
//  4. End (state Closed). Whatever ends first ends the session once, in
//     session.end: a client that goes away (EOF, reset, Terminate) closes
//     the upstream connection; an upstream that goes away gives the client
//     FATAL 08006 (unless the upstream sent its own FATAL first); a client
//     that cannot be reached gets nothing. Both connections are closed and
//     SessionInfo.Context is cancelled, so both goroutines return (an
//     Interceptor blocked in a message method returns too) and nothing is
//     left behind; then Interceptor.SessionEnd runs, once, with the error
//     the session ended with.
//
// # Session identity
//
// SessionInfo is what the Interceptor (and, through it, policy and audit)
// knows of a session: its id, the client address and TLS, the startup
// user, database and application_name, the instance name (config
// instance, by default the host name), and the user's PostgreSQL role
// memberships. The memberships (config.RoleMemberships, nested groups
// included) are resolved after login over the catalog connection — the
// one connection of the runtime that the verifier lookup of auth.mode
// terminate also uses, one query at a time — and only when an
// Interceptor is installed: a session without one needs none. A lookup
// that fails ends the login with FATAL 08006 before ReadyForQuery, as a
// failed verifier lookup does; WithRoleLookup replaces the lookup.
//
// What changes during the session is its Identity: the current role
// after SET ROLE and the end user (SET phiproxy.end_user). Package proxy
// does not parse SQL, so it only carries them: the Interceptor that
// mirrors the session state from the server's answers (proxy/phi)
// publishes them with SetIdentity, from its server→client goroutine;
// Identity reads them with one atomic load, from any goroutine.
//
// Each of a session's goroutines runs under recover, as net/http's
// conn.serve does: a panic anywhere in a session (startup, login, either
// pump, its Interceptor, the Interceptor's end) is logged with its type and
// stack, never its text, and ends that session with FATAL XX000; every
// other session keeps running. SQLSTATEs the upstream sends are parsed
// with pgerr.ParseCode, never trusted: an error without a usable code
// counts as XX000, a malformed one as 08P01.
//
// # Cancel
//
// A CancelRequest on a new connection is matched against the keys the
// proxy issued: by process ID (the upstream backend's own, so that
// pg_backend_pid(), NOTIFY and pg_stat_activity agree with the client),
// then by secret in constant time. A match is forwarded with the upstream
// backend's own key over a fresh upstream connection negotiated like the
// session's; a miss cancels nothing and is only logged. Several entries may
// share a process ID (PostgreSQL reuses it after a backend exits; a reload
// may change the upstream), so each session removes only its own entry when
// it ends. A cancel reaching another phiproxy instance cancels nothing: the
// secret lives only in the instance that served the session.
//
// # Shutdown
//
// Server.Shutdown follows net/http.Server: close the listeners, cut
// connections still in startup (57P03), wait up to limits.drain_timeout for
// sessions to end by themselves, then send every remaining one FATAL 57P01
// "terminating connection due to administrator command" and close it.
//
// # Errors and logs
//
// phiproxy's own errors are *pgerr.Error values and become ErrorResponse
// messages in one place, ErrorResponse in this package; the upstream's
// errors are relayed byte for byte. Logs (log/slog, the logger passed with
// WithLogger) carry session id, client address, user, database,
// application_name, TLS, durations, states and SQLSTATEs, never SQL text,
// parameters or row data.
package proxy

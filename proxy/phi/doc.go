// Package phi is phiproxy's PHI layer: it plugs into package proxy as a
// per-session proxy.Interceptor and makes configured PHI columns
// ciphertext in PostgreSQL while clients see plaintext.
//
// # Wiring
//
//	p, err := phi.New(ctx, cfg, phi.WithLogger(log))     // keys, catalog, Check, planner
//	srv, err := proxy.New(cfg, proxy.WithInterceptor(p.Factory()))
//	// SIGHUP: p.Reload(ctx, next) (keys + catalog + config, atomic)
//	// policy reload, lockdown: p.BumpDecisionEpoch()
//
// Factory is nil when no PHI column is configured: sessions then relay
// bytes without decoding anything. phi.WithObserver installs the
// statement lifecycle Observer (see below).
//
// Every snapshot load (start, Reload, catalog refresh) also checks the
// catalog overlay (overlay.go): views in schema phiproxy_overlay through
// which pg_attribute and information_schema.columns show each PHI column
// with its logical type. With catalog_overlay: install it is brought up to
// date over the catalog connection first; the planner sends catalog reads
// to it only when it is current, else they go as written (bytea).
//
// The snapshot follows DDL done elsewhere (notify.go): a dedicated
// connection LISTENs on phiproxy_catalog, which event triggers notify
// after DDL, and a refresh runs on a notification (debounced) and every
// catalog.refresh_interval; a refresh that finds nothing changed keeps the
// snapshot and its plans. Snapshots are loaded over a pgxpool
// (proxy.NewCatalogPool). The PHI map is the catalog database's: Factory
// gives sessions on other databases no Interceptor.
//
// # Per-session data flow
//
// Each session has one Interceptor. ClientMessage runs on the
// client→server goroutine, ServerMessage on the server→client goroutine;
// what they share (the FIFO of expected responses, search_path, the
// failed-transaction overlay) is behind one mutex that each side holds
// only for a few instructions per message. Prepared statements and portals
// are owned by the client goroutine; entries carry pointers to what the
// server side needs, so DataRows are transformed without locking.
//
// Simple protocol. A Query is planned (rewrite.Planner, cached per SQL
// text, catalog version, search_path and user). Pass-through plans are
// forwarded unchanged. Otherwise rewrite's Renderer (the one renderer,
// which the fuzzers check) splices in every literal slot sealed by package
// column (the one column encoder: canonicalised with package codec,
// encrypted under its column's key, plaintext wiped) as a bytea literal;
// an array literal on the right of = ANY (what pgx's simple protocol sends
// for a slice) is split with array_in's rules and spliced in as
// ARRAY[E'\\x…'::bytea, …]::bytea[], NULL elements kept. The rendered text
// is sent. The Query's FIFO entry keeps the statements: RowDescription i
// gets the logical type OIDs for the planned PHI positions (cross-checked
// with the table OID and attnum the server reports), each DataRow's PHI
// fields are decoded from bytea, decrypted and encoded in the column's
// format (column.Encoder's AppendOpen, as COPY TO does), and
// CommandComplete or EmptyQueryResponse moves to statement i+1 (applying
// its effects: search_path, catalog refresh after DDL).
//
// Extended protocol. Parse is planned like a Query; PHI parameters are
// declared bytea (or bytea[] for = ANY($n)) upstream and reported as their
// logical types in ParameterDescription. Bind seals each PHI parameter
// from the client's format with the same encoder (an array element by
// element) and sends it as binary bytea (NULL stays NULL); the portal
// remembers the result transform for the client's result format codes.
// Every message that the server answers (Parse, Bind, Describe, Execute,
// Close, Sync, Query, FunctionCall) pushes an entry; every answer is
// matched to the front entry. After an error the server skips to Sync, and
// so does the FIFO.
//
// SQL cursors. A DECLARE … CURSOR is planned as its query; once the
// server confirms it, the session keeps the DECLARE's result plan by
// cursor name (in the mirror, closed as PostgreSQL closes cursors: CLOSE,
// DISCARD ALL, transaction end, rollback of the declaring transaction).
// The rows of a FETCH, and a Describe of the cursor's portal, are matched
// to the cursor when they arrive (cursor.go); a cursor the proxy does not
// know gets no decryption.
//
// # Refusals
//
// A refusal (planner, policy, a value that does not canonicalise) must
// leave the session exactly as a server error would. phiproxy lets
// PostgreSQL run its own state machine: in a Query, the statements before
// the refused one are sent followed by a DO block that raises the
// refusal's SQLSTATE, and the server's error is replaced by ours; in the
// extended protocol the refused message is replaced by a poison message
// certain to fail at that point (a Parse of text that does not parse, a
// Bind naming a statement that does not exist) and the server's error is
// replaced by ours. The server then skips to Sync and fails an open
// transaction by itself.
//
// # Safety net
//
// Any DataRow value that is not a planned PHI result and holds an
// envelope of a loaded key (crypto.Recognizer: raw, bytea hex or escape
// output, encode()'s hex, escape and base64, inside array, record and
// json literals, at any offset) fails the statement with XX000 naming the
// column, never the value; values of types that cannot carry one
// (fixed-width numbers, date/time, uuid, bool, ...: the RowDescription's
// type OIDs, kept per Describe for later Executes) are not looked at. A
// PHI value that does not decrypt, and a RowDescription whose reported
// origin contradicts the plan, fail the same way. COPY output is checked
// field by field with the COPY parsers (its options read from the
// statement), notices and errors get each envelope replaced with
// "<encrypted>", and so do notification payloads (safety.go) and a
// statement's Redact columns (Sequelize's sequelize_caught_exception, a
// unique violation's detail). When a
// statement fails mid-stream, everything the server sends until
// ReadyForQuery is dropped; if the server's transaction is still open the
// client is told it failed (ReadyForQuery 'E') and, before the client's
// next message, a poison Query makes the upstream transaction fail for
// real, so that the next statement gets 25P02 and ROLLBACK works. Outside
// one the server commits the implicit transaction (the query string, or
// the pipeline up to Sync) that a client seeing an error believes rolled
// back: if anything in it may have changed something (atomic.go), the
// session ends with FATAL 08007 instead of ReadyForQuery.
//
// # Statement lifecycle
//
// Policy decisions and audit events hang on two points per execution (a
// simple-protocol statement, or one Execute of a portal), both on the
// server→client goroutine, where the answers are matched to the FIFO
// entries (observe.go):
//
//   - Observer.Start runs before the first row of the execution is
//     released: before its first DataRow is decrypted and forwarded
//     (dataRow), or before the CopyOutResponse of a COPY TO is forwarded
//     (copyOutStart). An error from it fails the statement there (fail):
//     no row leaves, and the rest of the server's answer is dropped as
//     for any failure here (atomic.go).
//   - Observer.End runs once per execution: at CommandComplete (rows from
//     its tag), PortalSuspended (a row-limited Execute; the next Execute
//     of the portal is a new execution), the server's ErrorResponse, a
//     failure in phiproxy (fail: the statement's later answers end
//     nothing more), a refusal (when the poison's error comes back and
//     is replaced by ours: the refused statement travels in queryRun and
//     the entry), and the session's end (SessionEnd: every statement
//     still waiting for an answer, outcome unknown).
//   - SessionObserver.SessionEnd, for an Observer that implements it,
//     runs last, with the error the proxy ended the session with (FATAL
//     57P05 or 25P03 for automatic logoff) or nil.
//
// Each sees the plan (rewrite.Statement: Action, Relations, Columns,
// Normalized, Fingerprint), the outcome (rows, SQLSTATE) and the
// session's identity, never a value. Statements that touch no PHI are not
// observed; refusals are, with no plan when the text could not be
// planned. Without an Observer the cost is one nil check per DataRow and
// per completion.
//
// The identity is the mirror's (mirror.go): the current role after SET
// ROLE as the server confirmed it, and the end user from SET
// phiproxy.end_user — a setting with the same transaction semantics as
// search_path (SET LOCAL, ROLLBACK, savepoints, RESET, DISCARD ALL), read
// back by the probe when the state is unknown, and starting from a
// phiproxy.end_user in the startup packet. The server goroutine, the
// mirror's only writer, publishes it in proxy.SessionInfo whenever it
// changes; since it applies a statement's effects at its CommandComplete,
// before the next statement's rows arrive, an execution sees the identity
// its statement ran with. A sqlcommenter end_user tag in the statement's
// text (rewrite.Plan.EndUser, kept in queryRun and prepared) overrides
// the end user for that statement only. Not followed: set_config on
// phiproxy.end_user, and ALTER ROLE/DATABASE … SET phiproxy.end_user
// defaults (seen only once a probe reads the state back).
//
// # Decision epochs
//
// A result transform is a decision (which columns are decrypted, with
// which cipher; with the policy engine, plaintext, masked or denied),
// and transforms are cached across statements: per prepared statement and
// result formats (resultX), per Query plan (queryX), and in every bound
// portal. Each carries the decision epoch it was built under.
// Proxy.BumpDecisionEpoch (a policy reload, a lockdown; Reload calls it,
// since a column's access or keys may have changed) moves the epoch on; a cached transform is rebuilt at its next lookup, a portal's at its
// next Execute (client goroutine) and, for one already sent, at its next
// DataRow (server goroutine, one atomic load per row): an open portal
// cannot keep decrypting under a decision that no longer holds
// (epoch.go). Execution.Epoch says which epoch a statement's rows were
// served under.
//
// # Session state and its limits
//
// search_path starts where PostgreSQL starts it — a search_path in the
// client's startup packet (parameter or options), else ALTER ROLE/DATABASE
// … SET defaults and the server's setting from the catalog snapshot. From
// then on the session state that decides what a name means (search_path,
// current role, temporary relations) and the prepared statements are
// mirrored from the server's answers with PostgreSQL's transaction
// semantics (mirror.go); the rules for statements sent before an answer
// arrives, for state the text cannot tell (read back with a probe query)
// and for DDL are in state.go.
// The session's server settings start from the upstream's ParameterStatus
// values at the end of login (proxy.SessionInfo.ServerParameters, so a
// startup packet's options='-c TimeZone=…' and role or database defaults
// count) and follow every later ParameterStatus (params.go):
//
//   - TimeZone: timestamptz PHI input without an offset is read in it and
//     text output is shown in it, as PostgreSQL does. A zone name Go cannot
//     load refuses timestamptz PHI values (0A000).
//   - DateStyle: the codec writes date, timestamp and timestamptz in ISO
//     form only. Rather than imitate the SQL, Postgres and German styles,
//     text output of those PHI values is refused (0A000, hint SET DateStyle
//     = ISO) while DateStyle is not ISO; binary results are served (checked
//     at Bind, when the result formats are known). Input is ISO 8601
//     whatever DateStyle says.
//   - client_encoding other than UTF8, or standard_conforming_strings off:
//     any text that mentions a PHI relation is refused (0A000) before it is
//     planned. The bytea literals phiproxy splices in (E'\\x…') mean the
//     same under both settings of standard_conforming_strings, but
//     libpg_query lexes as PostgreSQL does with it on and with UTF-8 text:
//     with it off, or with a client encoding whose characters can hide a
//     quote or backslash byte, phiproxy and the server could disagree on
//     where a literal ends, and PHI values would be encrypted and returned
//     in the wrong encoding. Text that names no PHI relation is relayed.
//
// # COPY
//
// COPY FROM STDIN and COPY TO STDOUT on PHI relations stream row by row
// in text, csv (copy_text.go) and binary (copy_binary.go) formats: rows
// or tuples are found across CopyData boundaries as PostgreSQL's COPY
// parser finds them, PHI fields are encrypted on the way in and decrypted
// on the way out (in binary, from and to the logical type's binary form,
// which is what pgx's CopyFrom sends since the proxy describes PHI
// columns with their logical types), everything else passes byte for
// byte, and memory is bounded by the largest row. A value that does not
// canonicalise, or a stream that is not valid COPY data, fails the COPY
// with a CopyFail upstream; the client gets our SQLSTATE (22P02, 22007,
// 22P03, 22P04, ...). Server-side file COPY is refused by package
// rewrite.
package phi

package proxy

import (
	"context"
	"net"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/config"
)

// Interceptor is a session's interception point between the client and the
// upstream server: the place where statements are classified, rewritten,
// refused, and results decrypted (issue 6 plugs in here).
//
// The relay loops decode only the message types an Interceptor selects with
// Intercepts; every other message is relayed as raw bytes without decoding.
// A session without an Interceptor (no PHI configured) decodes nothing: that
// is the pass-through path and it costs nothing beyond the relay itself.
//
// ClientMessage runs on the client→server goroutine, ServerMessage on the
// server→client goroutine; they may run concurrently with each other, never
// with themselves. A message passed in is valid only until the method
// returns (it points into the read buffer): copy what you keep.
//
// Each method decides what happens to the message through out:
//   - forward it, possibly rewritten: out.Forward(msg);
//   - drop it: do nothing;
//   - inject messages towards either side: out.ToServer, out.ToClient;
//   - refuse a statement: answer the client with
//     out.ToClient(ErrorResponse(pgerr.New(...))) at the point in the
//     response stream where PostgreSQL would have sent its error. Since the
//     Interceptor sees both directions it keeps the FIFO of expected
//     responses for pipelined batches itself (Parse/Bind/Describe/Execute
//     → ParseComplete/BindComplete/RowDescription/DataRow…, Sync →
//     ReadyForQuery) and knows when that point is reached.
//
// A non-nil error ends the session: the client gets it as a FATAL
// ErrorResponse (a *pgerr.Error keeps its SQLSTATE, anything else becomes
// XX000) and both connections are closed.
//
// The session's lifetime is SessionInfo.Context, as pgx's tracers pair
// Start with End: the context is cancelled as soon as the session starts
// to end (the client left, the upstream went away, Shutdown, an error), so
// that anything a message method waits for — an answer from the server,
// a blocking write to an audit sink — returns; then, once both relay
// goroutines have returned, SessionEnd is called, exactly once, to close
// out what is pending.
type Interceptor interface {
	// Intercepts returns the message types (the protocol's type bytes) to
	// decode and hand over, per direction. It is called once per session.
	Intercepts() (fromClient, fromServer MessageSet)
	// ClientMessage sees one selected message from the client: Query,
	// Parse, Bind, Describe, Execute, Close, Sync, Flush, FunctionCall,
	// CopyData, CopyDone, CopyFail or Terminate.
	ClientMessage(msg pgproto3.FrontendMessage, out *Out) error
	// ServerMessage sees one selected message from the server, for
	// example RowDescription, DataRow, ParameterDescription,
	// CommandComplete, ErrorResponse, ReadyForQuery, CopyData.
	ServerMessage(msg pgproto3.BackendMessage, out *Out) error
	// SessionEnd is called once when the session has ended, after both
	// relay goroutines have returned: it never runs concurrently with
	// ClientMessage or ServerMessage, and neither is called after it.
	// SessionInfo.Context is already cancelled. err is the error the
	// session ended with (a *pgerr.Error, as the client was sent it), nil
	// when it ended without one (Terminate, the client went away).
	SessionEnd(err error)
}

// Message type bytes of the messages an Interceptor can select.
const (
	// From the client.
	MsgQuery        byte = 'Q'
	MsgParse        byte = 'P'
	MsgBind         byte = 'B'
	MsgDescribe     byte = 'D'
	MsgExecute      byte = 'E'
	MsgClose        byte = 'C'
	MsgSync         byte = 'S'
	MsgFlush        byte = 'H'
	MsgFunctionCall byte = 'F'
	MsgCopyFail     byte = 'f'
	MsgTerminate    byte = 'X'
	// From either side.
	MsgCopyData byte = 'd'
	MsgCopyDone byte = 'c'
	// From the server.
	MsgRowDescription       byte = 'T'
	MsgDataRow              byte = 'D'
	MsgParameterDescription byte = 't'
	MsgCommandComplete      byte = 'C'
	MsgErrorResponse        byte = 'E'
	MsgReadyForQuery        byte = 'Z'
	MsgParseComplete        byte = '1'
	MsgBindComplete         byte = '2'
	MsgCloseComplete        byte = '3'
	MsgNoData               byte = 'n'
	MsgPortalSuspended      byte = 's'
	MsgEmptyQueryResponse   byte = 'I'
	MsgNoticeResponse       byte = 'N'
	MsgNotification         byte = 'A'
	MsgParameterStatus      byte = 'S'
	MsgCopyInResponse       byte = 'G'
	MsgCopyOutResponse      byte = 'H'
	MsgFunctionCallResponse byte = 'V'
)

// MessageSet is a set of message type bytes.
type MessageSet [4]uint64

// Messages returns the set of the given message types.
func Messages(types ...byte) MessageSet {
	var s MessageSet
	for _, t := range types {
		s[t>>6] |= 1 << (t & 63)
	}
	return s
}

// Has reports whether t is in the set.
func (s *MessageSet) Has(t byte) bool { return s[t>>6]&(1<<(t&63)) != 0 }

// Empty reports whether the set selects nothing.
func (s *MessageSet) Empty() bool { return s[0]|s[1]|s[2]|s[3] == 0 }

// SessionInfo describes a session to the code that builds its Interceptor.
//
// Its fields are set before the Interceptor is built and never change.
// What changes during the session — the current role after SET ROLE, the
// end user — is read with Identity, which is safe from any goroutine (both
// relay goroutines, and whatever the Interceptor hands it to); the
// Interceptor that follows those changes publishes them with
// SetIdentity. Do not copy a SessionInfo: pass its pointer.
type SessionInfo struct {
	// ID is a random session identifier (also in logs).
	ID string
	// User, Database and ApplicationName come from the startup message.
	User            string
	Database        string
	ApplicationName string
	// ClientAddr is the client's remote address.
	ClientAddr net.Addr
	// TLS reports whether the client leg is encrypted.
	TLS bool
	// Config is the configuration in force when the session started.
	Config *config.Config
	// StartupParameters are the client's startup parameters as sent
	// (user, database, application_name, options, client_encoding, ...),
	// without the "_pq_." protocol options. A copy owned by the session:
	// never modify it.
	StartupParameters map[string]string
	// ServerParameters are the upstream's ParameterStatus values at the end
	// of login (TimeZone, DateStyle, client_encoding,
	// standard_conforming_strings, server_version, ...): the settings the
	// session starts with, after the startup packet's options and the
	// role's and database's defaults. Later changes arrive as
	// ParameterStatus messages. Never modify it.
	ServerParameters map[string]string
	// Instance names this phiproxy instance (config instance, by default
	// the host name), as audit events do.
	Instance string
	// Roles are the PostgreSQL roles User is a member of, directly or
	// through nested groups, User itself included, sorted (what
	// pg_has_role(User, r, 'MEMBER') says), resolved over the catalog
	// connection after login. Only sessions with an Interceptor resolve
	// them (a failure ends the login with FATAL 08006); nil otherwise.
	// They are the session user's: after SET ROLE the current role
	// (Identity().Role) is one of them unless User is a superuser. Never
	// modify it.
	Roles []string

	ctx      context.Context
	identity atomic.Pointer[Identity]
}

// Identity is who a session acts as at one point in time.
type Identity struct {
	// Role is the current role (current_user): User until SET ROLE
	// changes it.
	Role string
	// EndUser is the application's end user from SET phiproxy.end_user,
	// "" when none is set (attribution, not authentication). A
	// sqlcommenter end_user tag applies to its statement only and is not
	// here.
	EndUser string
}

// Identity returns the session's identity as last published with
// SetIdentity; until then the current role is User and there is no end
// user. Safe for concurrent use.
func (i *SessionInfo) Identity() Identity {
	if id := i.identity.Load(); id != nil {
		return *id
	}
	return Identity{Role: i.User}
}

// SetIdentity publishes the session's identity; the Interceptor that
// mirrors SET ROLE and SET phiproxy.end_user from the server's answers
// calls it. Safe for concurrent use.
func (i *SessionInfo) SetIdentity(id Identity) { i.identity.Store(&id) }

// Context is the session's context: cancelled when the session ends (see
// Interceptor). Never nil.
func (i *SessionInfo) Context() context.Context {
	if i.ctx == nil {
		return context.Background()
	}
	return i.ctx
}

// Out is where an Interceptor sends messages. It is only valid during the
// call it was passed to.
type Out struct {
	s        *session
	toServer bool   // direction of the message being handled
	typ      byte   // type of the message being handled
	body     []byte // its body as received (valid during the call only)
}

// ForwardUnchanged sends the message being handled on in the direction it
// was travelling, as the bytes it arrived in: nothing is re-encoded. It is
// the cheap way to pass on a message the Interceptor decided not to change;
// the decoded message must not have been modified.
func (o *Out) ForwardUnchanged() error {
	if o.toServer {
		o.s.clientSaw(o.typ)
		return writeRaw(o.s.server, o.typ, o.body)
	}
	return writeRaw(o.s.client, o.typ, o.body)
}

// Forward sends msg on in the direction it was travelling.
func (o *Out) Forward(msg pgproto3.Message) error {
	if o.toServer {
		o.s.clientSaw(frontendType(msg))
		return o.s.server.send(msg)
	}
	return o.s.client.send(msg)
}

// ToServer sends msg to the upstream server. From ServerMessage (the other
// goroutine) it is flushed at once. The session's protocol state counts it
// like a message from the client.
func (o *Out) ToServer(msg pgproto3.Message) error {
	o.s.clientSaw(frontendType(msg))
	if o.toServer {
		return o.s.server.send(msg)
	}
	return o.s.server.sendNow(msg)
}

// frontendType is the protocol type byte of a message sent upstream, for
// the session's state tracking; 0 for messages that do not affect it.
func frontendType(msg pgproto3.Message) byte {
	switch msg.(type) {
	case *pgproto3.Query:
		return MsgQuery
	case *pgproto3.FunctionCall:
		return MsgFunctionCall
	case *pgproto3.Sync:
		return MsgSync
	case *pgproto3.Parse:
		return MsgParse
	case *pgproto3.Bind:
		return MsgBind
	case *pgproto3.Describe:
		return MsgDescribe
	case *pgproto3.Execute:
		return MsgExecute
	case *pgproto3.Close:
		return MsgClose
	case *pgproto3.Flush:
		return MsgFlush
	case *pgproto3.Terminate:
		return MsgTerminate
	}
	return 0
}

// ToClient sends msg to the client. From ClientMessage (the other
// goroutine) it is flushed at once.
func (o *Out) ToClient(msg pgproto3.Message) error {
	if !o.toServer {
		return o.s.client.send(msg)
	}
	return o.s.client.sendNow(msg)
}

// FlushServer writes what is buffered for the upstream server now. The
// relay flushes only when the client has nothing more to send: an
// Interceptor that waits in ClientMessage for the server's answer to
// messages it already forwarded must flush them first.
func (o *Out) FlushServer() error { return o.s.server.flush() }

// Session describes the session the message belongs to.
func (o *Out) Session() *SessionInfo { return &o.s.info }

// State is the session's current protocol state.
func (o *Out) State() State { return o.s.state() }

// frontendDecoders holds one flyweight per client message type, reused for
// every message of a session (as pgproto3.Backend does).
type frontendDecoders struct {
	query        pgproto3.Query
	parse        pgproto3.Parse
	bind         pgproto3.Bind
	describe     pgproto3.Describe
	execute      pgproto3.Execute
	close        pgproto3.Close
	sync         pgproto3.Sync
	flush        pgproto3.Flush
	functionCall pgproto3.FunctionCall
	copyData     pgproto3.CopyData
	copyDone     pgproto3.CopyDone
	copyFail     pgproto3.CopyFail
	terminate    pgproto3.Terminate
}

func (d *frontendDecoders) decode(typ byte, body []byte) (pgproto3.FrontendMessage, error) {
	var m pgproto3.FrontendMessage
	switch typ {
	case MsgQuery:
		m = &d.query
	case MsgParse:
		m = &d.parse
	case MsgBind:
		m = &d.bind
	case MsgDescribe:
		m = &d.describe
	case MsgExecute:
		m = &d.execute
	case MsgClose:
		m = &d.close
	case MsgSync:
		m = &d.sync
	case MsgFlush:
		m = &d.flush
	case MsgFunctionCall:
		m = &d.functionCall
	case MsgCopyData:
		m = &d.copyData
	case MsgCopyDone:
		m = &d.copyDone
	case MsgCopyFail:
		m = &d.copyFail
	case MsgTerminate:
		m = &d.terminate
	default:
		return nil, nil
	}
	if err := m.Decode(body); err != nil {
		return nil, err
	}
	return m, nil
}

// backendDecoders is frontendDecoders for server messages.
type backendDecoders struct {
	rowDescription       pgproto3.RowDescription
	dataRow              pgproto3.DataRow
	parameterDescription pgproto3.ParameterDescription
	commandComplete      pgproto3.CommandComplete
	errorResponse        pgproto3.ErrorResponse
	readyForQuery        pgproto3.ReadyForQuery
	parseComplete        pgproto3.ParseComplete
	bindComplete         pgproto3.BindComplete
	closeComplete        pgproto3.CloseComplete
	noData               pgproto3.NoData
	portalSuspended      pgproto3.PortalSuspended
	emptyQueryResponse   pgproto3.EmptyQueryResponse
	noticeResponse       pgproto3.NoticeResponse
	notification         pgproto3.NotificationResponse
	parameterStatus      pgproto3.ParameterStatus
	copyInResponse       pgproto3.CopyInResponse
	copyOutResponse      pgproto3.CopyOutResponse
	copyData             pgproto3.CopyData
	copyDone             pgproto3.CopyDone
	functionCallResponse pgproto3.FunctionCallResponse
}

func (d *backendDecoders) decode(typ byte, body []byte) (pgproto3.BackendMessage, error) {
	var m pgproto3.BackendMessage
	switch typ {
	case MsgRowDescription:
		m = &d.rowDescription
	case MsgDataRow:
		m = &d.dataRow
	case MsgParameterDescription:
		m = &d.parameterDescription
	case MsgCommandComplete:
		m = &d.commandComplete
	case MsgErrorResponse:
		m = &d.errorResponse
	case MsgReadyForQuery:
		m = &d.readyForQuery
	case MsgParseComplete:
		m = &d.parseComplete
	case MsgBindComplete:
		m = &d.bindComplete
	case MsgCloseComplete:
		m = &d.closeComplete
	case MsgNoData:
		m = &d.noData
	case MsgPortalSuspended:
		m = &d.portalSuspended
	case MsgEmptyQueryResponse:
		m = &d.emptyQueryResponse
	case MsgNoticeResponse:
		m = &d.noticeResponse
	case MsgNotification:
		m = &d.notification
	case MsgParameterStatus:
		m = &d.parameterStatus
	case MsgCopyInResponse:
		m = &d.copyInResponse
	case MsgCopyOutResponse:
		m = &d.copyOutResponse
	case MsgCopyData:
		m = &d.copyData
	case MsgCopyDone:
		m = &d.copyDone
	case MsgFunctionCallResponse:
		m = &d.functionCallResponse
	default:
		return nil, nil
	}
	if err := m.Decode(body); err != nil {
		return nil, err
	}
	return m, nil
}

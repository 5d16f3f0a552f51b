package phi

import (
	"github.com/phiproxy/phiproxy/policy"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/column"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/observe"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/rewrite"
)

// sessionSearchPath is the search_path a session starts with, as
// PostgreSQL decides it: a search_path the client gave at startup (as a
// parameter or in options as -c search_path=… / --search_path=…), else the
// role and database defaults and the server's setting from the catalog.
func sessionSearchPath(cat *config.Catalog, info *proxy.SessionInfo) string {
	if v, ok := info.StartupParameters["search_path"]; ok {
		return v
	}
	if v, ok := searchPathOption(info.StartupParameters["options"]); ok {
		return v
	}
	if cat == nil {
		return `"$user", public`
	}
	return cat.SearchPath(info.User, info.Database)
}

// sessionEndUser is the end user a session starts with: a
// phiproxy.end_user the client gave at startup (as a parameter or in
// options), else none. (A role's or database's ALTER … SET default is not
// seen until a probe reads the state back.)
func sessionEndUser(info *proxy.SessionInfo) string {
	if v, ok := info.StartupParameters["phiproxy.end_user"]; ok {
		return v
	}
	v, _ := startupOption(info.StartupParameters["options"], "phiproxy.end_user")
	return v
}

// startupSetsRole reports whether the startup packet sets role or
// session_authorization (as a parameter or in options), which changes
// current_user from the login user.
func startupSetsRole(info *proxy.SessionInfo) bool {
	for _, k := range []string{"role", "session_authorization"} {
		if _, ok := info.StartupParameters[k]; ok {
			return true
		}
		if _, ok := startupOption(info.StartupParameters["options"], k); ok {
			return true
		}
	}
	return false
}

// searchPathOption finds search_path in a startup options string.
func searchPathOption(opts string) (string, bool) { return startupOption(opts, "search_path") }

// startupOption finds the setting name in a startup options string, whose
// words are split on unescaped white space (backslash escapes), as the
// server's pg_split_opts does; the last setting wins.
func startupOption(opts, setting string) (string, bool) {
	var words []string
	var w strings.Builder
	esc, in := false, false
	for i := 0; i < len(opts); i++ {
		c := opts[i]
		switch {
		case esc:
			w.WriteByte(c)
			esc, in = false, true
		case c == '\\':
			esc, in = true, true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, w.String())
	}
	val, found := "", false
	for i := 0; i < len(words); i++ {
		kv := ""
		switch {
		case words[i] == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(words[i], "-c"):
			kv = words[i][2:]
		case strings.HasPrefix(words[i], "--"):
			kv = words[i][2:]
		default:
			continue
		}
		name, v, ok := strings.Cut(kv, "=")
		if ok && strings.EqualFold(strings.ReplaceAll(name, "-", "_"), setting) {
			val, found = v, true
		}
	}
	return val, found
}

// Entry kinds of the FIFO of expected responses. The client messages'
// type bytes, plus entryInjected for a poison Query of our own.
const (
	entryQuery    = 'Q'
	entryParse    = 'P'
	entryBind     = 'B'
	entryDescribe = 'D'
	entryExecute  = 'E'
	entryClose    = 'C'
	entrySync     = 'S'
	entryFunction = 'F'
	entryInjected = 'i'
	entryProbe    = 'p'
)

// entry is one client message that the server will answer, in order. An
// entry is a value: the client goroutine fills it in and copies it into
// the FIFO, the server goroutine copies out the front, and neither changes
// it after that (what the server updates — a Query's progress, a prepared
// statement's column names — lives behind its pointers).
type entry struct {
	kind byte
	// Query.
	q *queryRun
	// Parse, Describe 'S'.
	ps *prepared
	// Bind, Describe 'P', Execute.
	portal portal
	// describe is 'S' or 'P' for Describe.
	describe byte
	// effectful (Query, Sync) marks a cycle whose statements change the
	// session state the planner depends on: the client goroutine waits for
	// its ReadyForQuery before planning a statement that names PHI;
	// nameDDL marks one with DDL naming PHI, which every statement waits
	// for (the relation it creates is known to no snapshot yet).
	effectful bool
	nameDDL   bool
	// close is the Close message's object type and name.
	closeKind byte
	closeName string
	// cursor is the name of a Describe 'P' that names no protocol portal:
	// it may name an SQL cursor (one namespace), described by its DECLARE.
	cursor string
	// poison is our refusal standing in for the server's answer to the
	// poison message we sent instead of the client's; poisonCode is the
	// SQLSTATE the poison makes the server raise.
	poison     *pgerr.Error
	poisonCode string
	// refused is the statement the poison stands in for (Parse, Bind),
	// for the Observer.
	refused *refusedStmt
	// announced is the Execute's execution, announced to the Announcer
	// before it was sent (nil if not).
	announced *Execution
}

// refusedStmt is a statement phiproxy refused in the extended protocol:
// its plan (nil if it could not be planned) and end user tag.
type refusedStmt struct {
	st   *rewrite.Statement
	tags textTags
}

// textTags are a text's sqlcommenter tags: its end_user tag, and all of
// them for the Observer (which keeps only allow-listed keys).
type textTags struct {
	endUser string
	all     []rewrite.Tag
}

func tagsOf(p *rewrite.Plan) textTags { return textTags{endUser: p.EndUser, all: p.Tags} }

// fifo is the queue of expected responses: a ring of entry values, so
// that queuing and answering messages allocates nothing once the ring
// has grown to the session's pipeline depth.
type fifo struct {
	ring []entry
	head int // index of the front
	n    int
}

// fifoKeep is the largest ring kept once the FIFO empties: a burst of
// pipelined messages does not pin its ring for the session's life.
const fifoKeep = 1024

func (f *fifo) push(e *entry) {
	if f.n == len(f.ring) {
		ring := make([]entry, max(8, 2*len(f.ring)))
		for i := 0; i < f.n; i++ {
			ring[i] = f.ring[(f.head+i)%len(f.ring)]
		}
		f.ring, f.head = ring, 0
	}
	f.ring[(f.head+f.n)%len(f.ring)] = *e
	f.n++
}

// front is the front entry; the FIFO must not be empty.
func (f *fifo) front() *entry { return &f.ring[f.head] }

// pop removes the front entry and returns its kind; the FIFO must not be
// empty.
func (f *fifo) pop() byte {
	k := f.ring[f.head].kind
	f.ring[f.head] = entry{} // drop its references
	f.head = (f.head + 1) % len(f.ring)
	f.n--
	if f.n == 0 {
		f.head = 0
		if len(f.ring) > fifoKeep {
			f.ring = nil
		}
	}
	return k
}

// queryRun is a simple-protocol Query on its way through the server.
type queryRun struct {
	stmts []*rewrite.Statement
	idx   int
	// announced are the executions of stmts announced before the Query
	// was sent (nil when none was); taken by the server goroutine.
	announced []*Execution
	// decisions are the policy's decisions on stmts (nil: none made).
	decisions []*decision
	// poisonAt is the index of the statement replaced by a poison DO
	// block (-1 if none) and poison our error for it.
	poisonAt int
	poison   *pgerr.Error
	x        *rowX
	// one holds stmts when the Query has a single statement.
	one [1]*rewrite.Statement
	// sql is the client's text (the safety net reads a COPY's options).
	sql string
	// tags are the text's sqlcommenter tags; refused is the
	// statement at poisonAt (nil when the text could not be planned);
	// failed says an error ended the Query (server goroutine).
	tags    textTags
	refused *rewrite.Statement
	failed  bool
}

// prepared is an extended-protocol prepared statement.
type prepared struct {
	name string
	st   *rewrite.Statement // nil: nothing PHI about it
	// declared are the parameter type OIDs the client gave in Parse:
	// PostgreSQL describes a declared parameter with the declared type,
	// and Bind decodes a binary value by it.
	declared []uint32
	// lastFormats/lastX cache the result transform for the last result
	// format codes bound (client goroutine only).
	lastFormats []int16
	lastX       *rowX
	// names are the output column names from a Describe (server goroutine
	// only), for error messages.
	names []string
	// types are the output column type OIDs from a Describe (server
	// goroutine only), for the safety net; sql is the client's text.
	types []uint32
	sql   string
	// tags are the text's sqlcommenter tags.
	tags textTags
	// watch are observe mode's verdicts on the text, counted per Bind.
	watch []observe.Record
}

// portal is an extended-protocol portal.
type portal struct {
	ps *prepared
	x  *rowX
	// formats are the Bind's result format codes of a FETCH, whose
	// transform is built from its cursor when its rows arrive (portalX);
	// fetchDone says it was.
	formats   []int16
	fetchDone bool
	// dec is the policy's decision at Bind (for the audit trail).
	dec *decision
}

// session is one client session's Interceptor.
type session struct {
	p    *Proxy
	info *proxy.SessionInfo
	user string

	mu sync.Mutex
	// Guarded by mu.
	fifo     fifo
	skipping bool // an extended error was answered and no Sync is queued yet
	overlay  bool // the client was told its transaction failed; the server's has not yet
	// m is the session state as the server confirmed it (mirror.go).
	m mirror
	// confirmed are the prepared statements as the server confirmed them
	// (SQL-level and protocol-level share one namespace, as in
	// PostgreSQL).
	confirmed map[string]*prepared
	// pending counts effectful cycles sent and not yet answered;
	// pendingDDL those with DDL naming PHI.
	pending    int
	pendingDDL int
	// probe is the state read back by the last probe, set when its
	// ReadyForQuery arrives.
	probe *probeResult

	// doneCycles counts the cycles (Query, Sync, FunctionCall) the server
	// has answered with ReadyForQuery; written by the server goroutine.
	doneCycles atomic.Uint64
	// wake is signalled by the server goroutine whenever pending,
	// doneCycles or probe change; ended is closed when the session ends
	// (the session's context: proxy.SessionInfo.Context).
	wake  chan struct{}
	ended <-chan struct{}

	// params are the session's server settings (TimeZone, DateStyle,
	// client_encoding, standard_conforming_strings): written by the
	// server goroutine, read by both.
	params atomic.Pointer[settings]
	// copyErr is our refusal for the CopyFail we sent upstream (set by
	// the client goroutine, taken by the server goroutine).
	copyErr atomic.Pointer[pgerr.Error]

	// Client goroutine only.
	// stmts are the prepared statements as they will be once the server
	// has run what the client sent (confirmed plus the effects in flight);
	// opCycle holds, per name, the cycle of the last change in flight
	// (see lookupStmt).
	stmts   map[string]*prepared
	opCycle map[string]uint64
	// cycle numbers the cycle being sent: it grows with each Query, Sync
	// and FunctionCall queued.
	cycle uint64
	// batch follows the session state through the effectful statements of
	// the open extended-protocol batch (nil when it has none); extOpen
	// says a batch is open (extended messages sent since the last Sync).
	batch    *rewrite.Sequence
	extOpen  bool
	batchDDL bool // the open batch has DDL naming PHI
	portals  map[string]portal
	// enc seals literals and parameters (its plaintext scratch is wiped
	// after every value); cbuf and coffs hold the envelopes.
	enc   column.Encoder
	cbuf  []byte
	coffs []int
	// bindOut, bparams and bformats are the scratch of the Bind sent
	// upstream in place of one with PHI parameters.
	bindOut  pgproto3.Bind
	bparams  [][]byte
	bformats []int16
	// queryOut, rend and qbuf are the scratch of a rewritten Query.
	queryOut pgproto3.Query
	rend     rewrite.Renderer
	qbuf     []byte
	cin      *copyIn // the COPY FROM STDIN being streamed, if any

	// Server goroutine only.
	// head is a copy of the FIFO's front while haveHead; it stays
	// readable after pop until the next front.
	head     entry
	haveHead bool
	dropping bool           // a statement failed here: drop until ReadyForQuery
	dec      column.Encoder // opens the PHI fields of DataRows
	sbuf     []byte
	soffs    []int
	// queryXs are the last Query result transforms built (see queryX).
	queryXs    [4]cachedX
	queryXNext int
	cout       *copyStream // the COPY TO STDOUT being streamed (PHI, or the safety net's)
	coutRaw    bool        // a COPY TO STDOUT whose options are unknown
	qtypes     []uint32    // the current Query statement's result types
	tx         txTrack     // the implicit transaction, for atomicity (atomic.go)
	probeAcc   probeResult // what the probe in progress has read
	// obs is the Proxy's Observer (nil: none); ex is the execution in
	// progress and exDone says it already ended (a failure here) while
	// the server's answers to it still arrive (observe.go).
	obs    Observer
	adm    Admitter  // obs, when it admits statements too
	ann    Announcer // obs, when it hears of executions before they are sent
	tm     Timer     // obs, when it takes latencies
	ex     *Execution
	exDone bool

	// published is the identity last published in info (server
	// goroutine, s.mu held).
	published proxy.Identity
	// bgReason is the break-glass reason last seen in the mirror (server
	// goroutine); bgSince when it began (unix ns, 0: none), read by the
	// client goroutine's policy decisions.
	bgReason string
	bgSince  atomic.Int64
	// roles are the session user's role memberships for policy: the
	// login's (info.Roles), refreshed at each reload (a REVOKE applies
	// from the session's next statement after SIGHUP).
	roles atomic.Pointer[[]string]
	// masksClient and masksServer are masksFor's scratch, one per
	// goroutine.
	masksClient, masksServer []policy.Access
}

func newSession(p *Proxy, info *proxy.SessionInfo) *session {
	sp := sessionSearchPath(p.cur.Load().cat, info)
	s := &session{p: p, info: info, user: info.User, m: newMirror(sp, info.User, sessionEndUser(info)),
		stmts: map[string]*prepared{}, confirmed: map[string]*prepared{}, opCycle: map[string]uint64{},
		portals: map[string]portal{}, wake: make(chan struct{}, 1), ended: info.Context().Done(), obs: p.obs}
	s.adm, _ = p.obs.(Admitter)
	s.ann, _ = p.obs.(Announcer)
	s.tm, _ = p.obs.(Timer)
	if cat := p.cur.Load().cat; startupSetsRole(info) || cat != nil && cat.SetsRole(info.User, info.Database) {
		// The server decides who current_user is from the startup packet
		// or a role default (and "$user" in search_path follows it): read
		// it back before the first statement that names PHI instead of
		// guessing.
		s.m.unknown = true
	}
	s.published = s.m.identity()
	roles := info.Roles
	s.roles.Store(&roles)
	p.sessions.Store(s, struct{}{})
	info.SetIdentity(s.published)
	s.m.database = info.Database
	s.params.Store(newSettings(info.ServerParameters))
	return s
}

// Intercepts implements proxy.Interceptor.
func (s *session) Intercepts() (proxy.MessageSet, proxy.MessageSet) {
	return proxy.Messages(proxy.MsgQuery, proxy.MsgParse, proxy.MsgBind, proxy.MsgDescribe, proxy.MsgExecute,
			proxy.MsgClose, proxy.MsgSync, proxy.MsgFunctionCall, proxy.MsgCopyData, proxy.MsgCopyDone, proxy.MsgCopyFail),
		proxy.Messages(proxy.MsgRowDescription, proxy.MsgDataRow, proxy.MsgParameterDescription,
			proxy.MsgCommandComplete, proxy.MsgErrorResponse, proxy.MsgReadyForQuery, proxy.MsgParseComplete,
			proxy.MsgBindComplete, proxy.MsgCloseComplete, proxy.MsgNoData, proxy.MsgPortalSuspended,
			proxy.MsgEmptyQueryResponse, proxy.MsgCopyData, proxy.MsgCopyOutResponse, proxy.MsgCopyDone, proxy.MsgParameterStatus,
			proxy.MsgNoticeResponse, proxy.MsgNotification, proxy.MsgFunctionCallResponse)
}

// codec converts with the session's TimeZone (UTC when the server's zone
// cannot be loaded: settingsRefusal then keeps timestamptz PHI away).
func (s *session) codec() codec.Codec {
	tz := s.params.Load().tz
	if tz == nil {
		tz = time.UTC
	}
	return codec.Codec{TimeZone: tz}
}

// push queues e unless an extended-protocol error is being skipped (then
// the server answers nothing until Sync). It reports whether e was queued.
// A pending failed-transaction overlay is made real first: a poison Query
// makes the upstream transaction fail exactly where the client believes it
// already has.
func (s *session) push(e *entry, out *proxy.Out) (bool, error) {
	s.mu.Lock()
	inject := s.overlay
	if inject {
		s.overlay = false
		s.fifo.push(&entry{kind: entryInjected})
	}
	queued := true
	if e.kind == entrySync {
		s.skipping = false
	} else if s.skipping && e.kind != entryQuery && e.kind != entryFunction {
		queued = false
	}
	if queued {
		switch e.kind {
		case entryQuery, entrySync, entryFunction:
			s.cycle++
			if e.kind == entrySync {
				e.effectful = e.effectful || s.batch != nil
				e.nameDDL = e.nameDDL || s.batchDDL
				s.batch, s.extOpen, s.batchDDL = nil, false, false
			}
			if e.effectful {
				s.pending++
			}
			if e.nameDDL {
				s.pendingDDL++
			}
		default:
			s.extOpen = true
		}
		s.fifo.push(e)
	}
	s.mu.Unlock()
	// Sent outside the lock (a write may block on the network); the
	// client's own message follows it, so the server answers in FIFO order.
	if inject {
		if err := out.ToServer(&pgproto3.Query{String: poisonDO(pgerr.InFailedSQLTransaction)}); err != nil {
			return false, err
		}
	}
	return queued, nil
}

func (s *session) isSkipping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipping
}

// front returns the entry the next server message answers, nil if none
// is expected (server goroutine). It stays valid after pop, until the next
// front.
func (s *session) front() *entry {
	if s.haveHead {
		return &s.head
	}
	s.mu.Lock()
	if s.fifo.n > 0 {
		s.head = *s.fifo.front()
		s.haveHead = true
	}
	s.mu.Unlock()
	if !s.haveHead {
		return nil
	}
	return &s.head
}

// pop removes the front entry (server goroutine).
func (s *session) pop() {
	s.mu.Lock()
	if s.fifo.n > 0 {
		s.fifo.pop()
	}
	s.mu.Unlock()
	s.haveHead = false
}

// poisonDO is a statement that fails with code: it stands in for a refused
// statement so that PostgreSQL itself runs the statements before it, rolls
// back what it must and marks an open transaction failed. The message is a
// marker; the client gets our ErrorResponse instead of the server's.
func poisonDO(code pgerr.Code) string {
	return "DO $phiproxy$BEGIN RAISE EXCEPTION USING ERRCODE = '" + code.String() + "', MESSAGE = '" + poisonMessage + "'; END$phiproxy$"
}

const poisonMessage = "phiproxy refusal"

// poisonParse is text that fails to parse (42601) in Parse.
const poisonParse = "phiproxy refused"

// poisonStatement is a prepared statement name no client uses: a Bind
// naming it fails with 26000.
const poisonStatement = "phiproxy\x01refused"

// checkStatement applies the per-statement policy and support checks.
func (s *session) checkStatement(_ *snapshot, st *rewrite.Statement) error {
	if err := breakGlassReason(st); err != nil {
		return err
	}
	return copyCheck(st)
}

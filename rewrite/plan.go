package rewrite

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"

	pg "github.com/pganalyze/pg_query_go/v5"
)

type auditText struct {
	once        sync.Once
	text        string
	normalized  string
	fingerprint string
}

func (a *auditText) compute() {
	a.once.Do(func() {
		a.normalized = normalizeSQL(a.text)
		if f, err := pg.Fingerprint(a.text); err == nil {
			a.fingerprint = f
		}
	})
}

// Normalized is the statement with every constant replaced by $n and
// comments removed (normalizeSQL); it never holds a value. It is "" for a
// statement that touches no PHI.
func (s *Statement) Normalized() string {
	if s.audit == nil {
		return ""
	}
	s.audit.compute()
	return s.audit.normalized
}

// Fingerprint is pg_query's fingerprint of the statement (hex), "" for a
// statement that touches no PHI.
func (s *Statement) Fingerprint() string {
	if s.audit == nil {
		return ""
	}
	s.audit.compute()
	return s.audit.fingerprint
}

// Plan is what the proxy does with one query string (one simple-protocol
// Query message or one extended-protocol Parse). A string holds one or more
// statements; each gets a Statement. Plans are immutable and shared between
// sessions through the Cache: never modify one.
type Plan struct {
	// SQL is the original text. The text to send is SQL with Slots and Edits
	// applied: see Render.
	SQL string
	// PassThrough is true when no statement touches PHI: send SQL
	// unchanged, transform nothing, audit nothing. Statements may still
	// carry Effects. A string with a SQL-level EXECUTE is never
	// pass-through: the proxy must look up the prepared statement and call
	// BindExecute.
	PassThrough bool
	Statements  []*Statement
	// EndUser is the sqlcommenter end_user tag (/*end_user='dr.smith'*/),
	// URL-decoded, or "".
	EndUser string
	// Tags are the sqlcommenter tags of the text's comments, URL-decoded,
	// end_user included (nil for a pass-through plan). They are the
	// application's text: keep only allow-listed keys.
	Tags []Tag
}

// Statement is the plan of one statement of the string.
type Statement struct {
	// Offset and Length locate the statement in Plan.SQL (bytes).
	Offset, Length int
	// Tag is the statement kind in upper case ("SELECT", "INSERT", ...).
	Tag string
	// TouchesPHI says the statement reaches a PHI relation; only then are
	// Action, Relations, Columns, Normalized and Fingerprint set.
	TouchesPHI bool
	Action     Action
	// Relations ("schema.table") and Columns ("schema.table.column") are
	// the PHI relations and columns the statement reaches, sorted.
	Relations []string
	Columns   []string
	// Predicates are the PHI columns (identities, sorted) the statement
	// compares, joins, groups or counts distinct on — where a role that
	// may not read a column in plaintext could probe it; Writes those it
	// assigns (INSERT, UPDATE SET, ON CONFLICT DO UPDATE, INSERT …
	// SELECT). Policy decides on both.
	Predicates []string
	Writes     []string
	// audit computes Normalized and Fingerprint on first use: they cost
	// two more passes of libpg_query, paid once per cached plan and only
	// for statements that are audited.
	audit *auditText

	// Slots are literals that must be encrypted, in text order.
	Slots []Slot
	// Edits are fixed text replacements (for example a cast of a PHI
	// parameter to its logical type becomes a cast to bytea).
	Edits []Edit
	// Params are the $n bound for PHI columns, by number.
	Params []Param
	// Results are the output columns that carry PHI, by position.
	Results []Result
	// Redact lists output columns (0-based) of server-made text that may
	// quote ciphertext (the PG_EXCEPTION_DETAIL that Sequelize's
	// findOrCreate returns as sequelize_caught_exception: Key (ssn)=(\x…)
	// already exists.): the proxy replaces each envelope in them with
	// <encrypted> instead of refusing the row.
	Redact []int

	// Effects lists session state the statement changes.
	Effects Effect
	// SearchPath is the new search_path for SET [LOCAL] search_path with a
	// value (in SHOW search_path form); empty when Effects has
	// EffectSearchPath but the value is not known statically (RESET,
	// DEFAULT, set_config): the proxy must ask the server.
	SearchPath string
	// PathReset, with EffectSearchPath, returns search_path to the
	// session's default (RESET, SET … TO DEFAULT, RESET ALL, DISCARD ALL);
	// SearchPath is then empty.
	PathReset bool
	// Role is the current user after SET ROLE or set_config('role', …)
	// (EffectRole): "" means the session user (RESET ROLE, SET ROLE NONE,
	// DISCARD ALL). "$user" in search_path resolves to it.
	Role string
	// TempCreate names a temporary relation the statement creates;
	// TempDrop lists names a DROP removes from pg_temp if the session has
	// them there; TempClear is DISCARD TEMP / DISCARD ALL.
	TempCreate string
	TempDrop   []string
	TempClear  bool
	// StateUnknown: after this statement search_path, the current role or
	// the temporary relations cannot be known from the text (DO, CALL,
	// set_config with a computed name or value, SET SESSION
	// AUTHORIZATION): the proxy must read them from the server before it
	// plans a statement that names a PHI relation.
	StateUnknown bool
	// NameDDL: DDL that may change which relation a PHI (or colliding)
	// name resolves to: statements after it that name one must be planned
	// against the catalog as the DDL left it.
	NameDDL bool
	// Creates is the relation a CREATE TABLE/VIEW/MATERIALIZED VIEW, a
	// CREATE TABLE AS or a RENAME TO makes appear under a new name: until
	// the catalog snapshot sees it, the proxy refuses statements that name
	// it after NameDDL.
	Creates string
	// Savepoint is the name in SAVEPOINT, RELEASE and ROLLBACK TO; Chain
	// is COMMIT/ROLLBACK AND CHAIN (a new transaction starts at once).
	Savepoint string
	Chain     bool
	// SetEndUser is the value of SET phiproxy.end_user.
	SetEndUser string
	// SetBreakGlass is the reason of SET phiproxy.break_glass ("" for
	// RESET and the like: break-glass ends).
	SetBreakGlass string
	// Prepare is set for SQL-level PREPARE: the Statement's Params and
	// Results describe the prepared statement.
	Prepare string
	// Execute is set for SQL-level EXECUTE: call BindExecute with the
	// Statement of the PREPARE to get slots and results.
	Execute *Execute
	// Deallocate is the name for DEALLOCATE ("" with EffectDeallocate
	// means DEALLOCATE ALL).
	Deallocate string
	// Copy is set for COPY ... FROM STDIN / TO STDOUT.
	Copy *Copy
	// Explain is true for EXPLAIN without ANALYZE: nothing is read or
	// written, but literals are still encrypted.
	Explain bool

	// Declare is set for DECLARE … CURSOR (PHI or not): the Statement's
	// Results describe the rows every FETCH of the cursor returns.
	Declare *Cursor
	// Fetch names the cursor of FETCH and MOVE (Move set for MOVE, which
	// returns no rows): its rows are decrypted with the Results of the
	// DECLARE that opened it, as the server confirmed it.
	Fetch string
	Move  bool
	// CloseCursor names the cursor of CLOSE; CloseAll is CLOSE ALL or
	// DISCARD ALL (every cursor is closed).
	CloseCursor string
	CloseAll    bool

	// literalDependent is set when the analysis read a literal's value
	// (ORDER BY 2, set_config('search_path', …)): such a plan is never a
	// literal-shape template (shape.go).
	literalDependent bool
}

// Action is the audit action of a statement (contract: DESIGN §8).
type Action string

// Audit actions.
const (
	ActionNone    Action = ""
	ActionRead    Action = "read"
	ActionWrite   Action = "write"
	ActionDelete  Action = "delete"
	ActionCopyIn  Action = "copy_in"
	ActionCopyOut Action = "copy_out"
)

// Effect is a set of session-state changes.
type Effect uint16

// Effects the proxy tracks.
const (
	// EffectSearchPath: search_path changes (see Statement.SearchPath).
	EffectSearchPath Effect = 1 << iota
	// EffectCatalog: DDL; refresh the catalog snapshot after success.
	EffectCatalog
	// EffectPrepare, EffectExecute, EffectDeallocate: SQL-level prepared
	// statements (see Statement.Prepare, Execute, Deallocate).
	EffectPrepare
	EffectExecute
	EffectDeallocate
	// EffectTransaction: BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
	EffectTransaction
	// EffectDiscard: DISCARD ALL/PLANS/TEMP (prepared statements and
	// search_path may be reset).
	EffectDiscard
	// EffectEndUser: SET phiproxy.end_user (see Statement.SetEndUser).
	EffectEndUser
	// EffectRole: SET ROLE / SET SESSION AUTHORIZATION / RESET ROLE;
	// re-resolve role memberships for policy.
	EffectRole
	// EffectLocal: the SET is LOCAL (undone at transaction end).
	EffectLocal
	// EffectBreakGlass: SET phiproxy.break_glass (Statement.SetBreakGlass).
	EffectBreakGlass
)

var effectNames = []string{"search_path", "catalog", "prepare", "execute", "deallocate", "transaction", "discard", "end_user", "role", "local", "break_glass"}

func (e Effect) String() string {
	var parts []string
	for i, n := range effectNames {
		if e&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, ",")
}

// PHIColumn identifies a PHI column as the proxy needs it to encrypt,
// decrypt, check policy and describe types.
type PHIColumn struct {
	// Ident is "schema.table.column" of the configured column.
	Ident string
	// RelOID and Attnum are the column's origin (for a configured view
	// column, the view's).
	RelOID uint32
	Attnum int16
	// Type is the logical type; Mode and Key as configured.
	Type string
	Mode string
	Key  string
}

// Slot is a literal in the original text that must become ciphertext. The
// proxy canonicalises Text to Column.Type's canonical text form (pgtype),
// encrypts it with the column's key and replaces SQL[Offset:Offset+Length]
// with a bytea literal such as '\x5048…'::bytea. A slot may cover a cast
// around the literal ('1980-1-2'::date, date '1980-1-2'): the whole cast is
// replaced.
type Slot struct {
	Offset, Length int
	// Text is the literal's plaintext: the unescaped string constant, or
	// the numeric/boolean literal as written.
	Text string
	// Array is set for an array literal on the right of col = ANY(...) or
	// col <> ALL(...) ('{a,b}', '{a,b}'::text[]): Text is the array's text
	// form, with elements of Column.Type. The proxy encrypts each element
	// and renders ARRAY['\x…'::bytea, …]::bytea[] (NULL elements stay NULL,
	// an empty array is '{}'::bytea[]).
	Array bool
	// Assign is set when the value is written into the column (VALUES,
	// UPDATE SET, INSERT … SELECT, ON CONFLICT … SET): the proxy applies
	// the column's type modifier as PostgreSQL's assignment does (22001 for
	// a too-long varchar(n), rounding for numeric(p,s) and timestamp(p)).
	// Otherwise the value is compared with the column and keeps its value.
	Assign bool
	// Cast is an explicit cast with a type modifier written around the
	// value ('abcdefgh'::varchar(3), CAST(x AS numeric(5,2))), in config's
	// canonical spelling; the proxy applies it first, as PostgreSQL
	// applies an explicit cast (truncation, rounding). "" when none.
	Cast   string
	Column PHIColumn
}

// LogValue keeps the plaintext out of logs.
func (s Slot) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("offset", s.Offset), slog.Int("length", s.Length),
		slog.String("column", s.Column.Ident), slog.String("text", "REDACTED"))
}

// Edit replaces SQL[Offset:Offset+Length] with Text (no secret involved).
type Edit struct {
	Offset, Length int
	Text           string
}

// Param is a $n bound for a PHI column: the proxy reports Column.Type in
// ParameterDescription, encrypts the client's value for Column (after
// decoding it with the client's format and canonicalising) and sends it as
// bytea. With Array, the value is an array of Column.Type whose elements
// are each encrypted, sent as bytea[].
type Param struct {
	Number int
	Array  bool
	// Assign and Cast are as in Slot.
	Assign bool
	Cast   string
	Column PHIColumn
}

// Result is an output column carrying PHI: decrypt (or mask or deny) with
// Column and describe it to the client as Column.Type. Position is 0-based
// among the statement's output columns.
type Result struct {
	Position int
	Column   PHIColumn
}

// Execute describes a SQL-level EXECUTE name(args), bare or nested in
// EXPLAIN or CREATE TABLE … AS.
type Execute struct {
	Name string
	Args []ExecArg
	// Explain: EXPLAIN [ANALYZE] EXECUTE. The statement's output is the
	// query plan, not the prepared statement's rows; with Analyze the
	// prepared statement runs (and writes), without it nothing runs. The
	// arguments are sent either way, so they are encrypted either way.
	Explain, Analyze bool
	// CreateTableAs: CREATE TABLE … AS EXECUTE. The rows go into a new
	// table, so BindExecute refuses it when the prepared statement returns
	// PHI columns, as CREATE TABLE AS SELECT is refused.
	CreateTableAs bool
}

// Cursor is what DECLARE says of a cursor.
type Cursor struct {
	Name string
	// Binary: DECLARE … BINARY (a simple-protocol FETCH returns binary
	// rows: the RowDescription's format codes say so). Hold: WITH HOLD
	// (the cursor outlives the COMMIT of its transaction). Scroll: SCROLL.
	Binary, Hold, Scroll bool
}

// ExecArg is one argument of EXECUTE.
type ExecArg struct {
	Offset, Length int
	// Kind is "literal", "null", "param" or "expr".
	Kind   string
	Text   string // literal plaintext
	Number int    // for "param"
}

// Copy describes COPY ... FROM STDIN / TO STDOUT on a PHI relation or query.
type Copy struct {
	// In is true for FROM STDIN.
	In bool
	// Format is text, csv or binary.
	Format string
	// Options are the remaining COPY options by lower-case name
	// (delimiter, null, header, quote, escape, encoding, ...), as written.
	Options map[string]string
	// Fields are the fields of each row in order; Column is set for PHI
	// fields.
	Fields []CopyField
}

// CopyField is one field of a COPY row.
type CopyField struct {
	Name   string
	Column *PHIColumn
}

// BindExecute returns the plan of a SQL-level EXECUTE given the Statement
// planned for its PREPARE: arguments bound for PHI parameters become slots
// (in the EXECUTE's text), and results, action and PHI relations are the
// prepared statement's. An argument for a PHI parameter that is not a
// literal or NULL is refused. Nested in EXPLAIN, the statement returns no
// PHI column (its output is the query plan); CREATE TABLE … AS EXECUTE of a
// prepared statement that returns PHI columns is refused.
func BindExecute(exec, prepared *Statement) (*Statement, error) {
	if exec.Execute == nil {
		panic("BUG: BindExecute on a statement that is not EXECUTE")
	}
	if exec.Execute.CreateTableAs && len(prepared.Results) > 0 {
		r := prepared.Results[0].Column
		return nil, refusal(fmt.Sprintf("CREATE TABLE AS EXECUTE %s is not supported on PHI column %s (%s)", exec.Execute.Name, r.Ident, r.Mode),
			"a new table would hold ciphertext outside a configured column; create the table and INSERT ... SELECT into configured PHI columns")
	}
	out := *exec
	out.TouchesPHI = prepared.TouchesPHI
	out.Action = prepared.Action
	out.Relations = prepared.Relations
	out.Columns = prepared.Columns
	out.Predicates, out.Writes = prepared.Predicates, prepared.Writes
	out.Results = prepared.Results
	if exec.Execute.Explain {
		out.Results = nil
		out.Explain = !exec.Execute.Analyze
	}
	out.audit = prepared.audit
	out.Slots = nil
	for _, p := range prepared.Params {
		if p.Number > len(exec.Execute.Args) {
			continue
		}
		arg := exec.Execute.Args[p.Number-1]
		switch {
		case arg.Kind == "null":
		case arg.Kind == "literal":
			out.Slots = append(out.Slots, Slot{Offset: arg.Offset, Length: arg.Length, Text: arg.Text, Array: p.Array, Assign: p.Assign, Cast: p.Cast, Column: p.Column})
		default:
			return nil, refusal(fmt.Sprintf("EXECUTE %s: argument %d is bound for PHI column %s and must be a literal or NULL", exec.Execute.Name, p.Number, p.Column.Ident),
				"pass a plain literal, or use the extended protocol with a parameter")
		}
	}
	return &out, nil
}

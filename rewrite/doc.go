// Package rewrite turns SQL text into a Plan the proxy can execute on
// ciphertext, or into a clear refusal (*pgerr.Error with a SQLSTATE, a
// message naming relation.column and a hint).
//
// It is pure: no I/O, no keys, no clock, no package-level mutable state
// (deps_test.go enforces the imports). The proxy owns everything with a
// side effect.
//
// # Inputs
//
//   - the PHI column map (Columns, from config: schema, table, column,
//     logical type, mode, key);
//   - a Catalog (relations with OIDs, columns with attnums, views and
//     functions that read PHI, a Version); the proxy implements it from a
//     pg_catalog snapshot, tests use MemCatalog;
//   - per statement, the Session (search_path as SHOW prints it, user,
//     the session's temporary relations, which are found first).
//
// # Flow
//
//	planner := rewrite.NewPlanner(cols, catalog, cache)   // per config+catalog snapshot
//	plan, err := planner.Plan(sql, rewrite.Session{SearchPath: sp, User: u})
//	if err != nil { send ErrorResponse from pgerr.As(err); return }
//	if plan.PassThrough { forward sql unchanged (still apply Effects); return }
//	var r rewrite.Renderer                                 // per session: its scratch is reused
//	text, bad, err := r.Text(&buf, plan.SQL, plan.Statements, len(plan.Statements),
//	    func(dst []byte, s *rewrite.Slot) ([]byte, error) {
//	        // apply s.Cast, canonicalise s.Text to s.Column.Type (with its
//	        // modifier, as an assignment if s.Assign, else a comparison),
//	        // encrypt with s.Column.Key, append a bytea literal: '\x5048…'::bytea
//	    })
//	// (Renderer is the one renderer: the proxy sends what it renders and
//	// FuzzPlan checks the same code. A refusal at statement bad renders
//	// the statements before it with n = bad.)
//	// Params: encrypt $n values for Param.Column, send as bytea, describe
//	//         them to the client as Param.Column.Type.
//	// Results: decrypt output column Result.Position with Result.Column
//	//          (cross-check with RowDescription's table OID + attnum).
//	// Redact:  replace envelopes in these output columns (server-made
//	//          text) with <encrypted> instead of refusing the row.
//	// Audit:   Statement.Action, Relations, Columns, Normalized,
//	//          Fingerprint, Plan.EndUser.
//
// 1. A lexical pre-check (no parsing, no allocation) looks for any PHI
// relation name, any view or function over PHI, and anything that could
// spell one (U& escapes) anywhere in the text, and for statements that may
// change session state. With neither, the plan is pass-through.
//
// 2. Otherwise the text is parsed once with libpg_query. Every statement
// gets its Effects (search_path, DDL → catalog refresh, PREPARE, EXECUTE,
// DEALLOCATE, transaction control, DISCARD, SET phiproxy.end_user, SET
// ROLE). Each statement whose own text mentions a PHI name is analyzed:
// names are resolved with the search_path, * is expanded from the catalog,
// aliases, subqueries, CTEs, joins and set operations are followed, and
// every use of a PHI column is checked against what its mode allows
// (DESIGN §4). Anything else is refused before anything is sent: fail
// closed.
//
// 3. Literals bound for a PHI column become Slots: byte ranges of the
// original text (including a cast around the literal), so comments,
// sqlcommenter tags and formatting survive; nothing is deparsed. The slot
// carries the literal's plaintext as written (unescaped string value, or
// the numeric/boolean text): canonicalisation to the logical type's text
// form ('1980-1-2' → '1980-01-02') is the proxy's job, with pgtype. A
// value bound for a PHI column is always plaintext to encrypt: a literal
// or parameter cast to bytea (or bytea[]) there is refused, never taken as
// ciphertext. The proxy plans only text a client sent; rendered text goes
// upstream and is never planned again (were it fed back, its ciphertext
// literals would be refused, so nothing is encrypted twice or stored as
// given). An array literal after = ANY / <> ALL ('{a,b}', '{a,b}'::text[])
// is one slot with Slot.Array set; the proxy renders it as
// ARRAY[…::bytea, …]::bytea[].
//
// One CREATE FUNCTION is planned rather than refused: Sequelize's
// findOrCreate string (sequelize.go), recognised byte for byte, whose
// body's single INSERT is planned as a statement of its own and whose
// SELECT of the function's row is decrypted by the row type.
//
// Every unqualified reference to a name that a PHI relation, or a view or
// function over one, has becomes an Edit that schema-qualifies it as
// resolved (pin.go), so that a drift between the proxy's model of the
// session and the server's becomes a server error, never plaintext in a
// PHI column.
//
// With WithCatalogOverlay, a SELECT (or a DECLARE … CURSOR over one) that
// reads pg_catalog.pg_attribute or information_schema.columns gets Edits
// that send those reads to the overlay's views, so introspection sees PHI
// columns with their logical types (overlay.go); the pre-check then also
// parses text naming pg_attribute or information_schema.
//
// 4. Plans (and refusals) are cached in a Cache keyed by exact SQL text,
// catalog version, search_path and user. On an exact-text miss, text that
// names PHI is lexed into a literal shape (each string and numeric literal
// replaced by a marker of its kind, comments kept); a plan cached for the
// same shape is re-bound to the new literals instead of parsing again
// (shape.go: only data statements without session effects, and never a
// refusal). Simple-protocol clients inline values, so without this tier
// every such statement would be parsed.
//
// SQL-level EXECUTE needs the plan of its PREPARE, which is session state:
// the proxy keeps Statement values by Prepare name and calls BindExecute.
package rewrite

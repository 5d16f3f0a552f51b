package rewrite

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v5"
	pgparser "github.com/pganalyze/pg_query_go/v5/parser"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Session is the per-session input that changes a plan.
type Session struct {
	// SearchPath is the session's search_path as SHOW search_path prints
	// it, e.g. `"$user", public`.
	SearchPath string
	// User is the current user (current_user: the role after SET ROLE),
	// substituted for "$user" in SearchPath as PostgreSQL does.
	User string
	// ResetPath is what RESET search_path returns to within the string
	// (the session's starting value); SessionUser is what RESET ROLE
	// returns to.
	ResetPath   string
	SessionUser string
	// TxDirty says the current transaction changed search_path, the role
	// or the temporary relations (so COMMIT or ROLLBACK may change them
	// back).
	TxDirty bool
	// Database is the database the session is connected to: the catalog
	// overlay exists only in the catalog's (WithCatalogOverlay).
	Database string
	// Temp lists the session's temporary relations the proxy knows of:
	// folded names, sorted, each followed by a NUL ("" for none). They are
	// found before the search_path, as PostgreSQL searches pg_temp first
	// unless the path names it elsewhere.
	Temp string
}

// Planner plans statements against one PHI column map and one catalog
// snapshot. It is immutable and safe for concurrent use; build a new one
// when the config or the catalog changes (they may share a Cache).
type Planner struct {
	cols  *Columns
	cat   Catalog
	ix    nameIndex
	funcs map[string]Dependent // PHI-reading functions by name
	// pins are the relation names whose unqualified references are sent
	// schema-qualified (pin.go): PHI relations, views and functions over
	// them.
	pins  map[string]bool
	cache *Cache
	// overlay is the catalog overlay's schema, "" when it is off, and
	// overlayDB the database that holds it (overlay.go).
	overlay, overlayDB string
	// maxPHIText bounds the text of a PHI statement that is planned
	// (limits.go).
	maxPHIText int
}

// sqlRunners are built-in functions that run SQL given as text, so a PHI
// relation may hide in an expression: refused whenever PHI is configured.
var sqlRunners = map[string]bool{
	"query_to_xml": true, "query_to_xmlschema": true, "query_to_xml_and_xmlschema": true,
	"table_to_xml": true, "table_to_xmlschema": true, "table_to_xml_and_xmlschema": true,
	"cursor_to_xml": true, "cursor_to_xmlschema": true,
	"schema_to_xml": true, "schema_to_xmlschema": true, "schema_to_xml_and_xmlschema": true,
	"database_to_xml": true, "database_to_xmlschema": true, "database_to_xml_and_xmlschema": true,
	"dblink": true, "dblink_exec": true,
}

// NewPlanner returns a Planner. cache may be nil (no caching).
func NewPlanner(cols *Columns, cat Catalog, cache *Cache, opts ...PlannerOption) *Planner {
	if cols == nil {
		cols, _ = NewColumns(nil)
	}
	p := &Planner{cols: cols, cat: cat, ix: nameIndex{words: map[string]uint8{}}, funcs: map[string]Dependent{}, pins: map[string]bool{}, cache: cache, maxPHIText: DefaultMaxPHIText}
	for rel := range cols.byRel {
		p.ix.add(rel[strings.IndexByte(rel, '.')+1:])
		p.pins[rel[strings.IndexByte(rel, '.')+1:]] = true
	}
	if len(cols.byRel) > 0 {
		for _, d := range cat.PHIDependents() {
			p.ix.add(d.Name)
			p.pins[d.Name] = true
			if d.Kind == DependentFunction {
				p.funcs[d.Name] = d
			}
		}
		for f := range sqlRunners {
			p.ix.add(f)
		}
		p.ix.add("set_config")
	}
	for _, o := range opts {
		o(p)
	}
	if p.overlay != "" {
		for _, w := range overlayWords {
			p.ix.addKind(w, wordCatalog)
		}
	}
	return p
}

// MentionsPHI is the cheap lexical check the pass-through path relies on:
// false means the text names no PHI relation, no view or function over
// one, and nothing that could spell one (U& escapes).
func (p *Planner) MentionsPHI(sql string) bool {
	m, _ := p.ix.precheck(sql)
	return m
}

// Plan plans sql for a session, through the cache when the Planner has
// one. The error is a *pgerr.Error refusal; the statement must then not be
// sent.
func (p *Planner) Plan(sql string, sess Session) (*Plan, error) {
	if p.cache == nil {
		return p.plan(sql, sess)
	}
	if !p.cache.cacheable(sql) {
		// Too long to cache: neither the exact text nor its literal shape
		// (whose key is as long) would be kept, so neither is looked up.
		return p.planText(sql, sess, true)
	}
	k := cacheKey{sql: sql, version: p.cat.Version(), sess: sess}
	if e, ok := p.cache.get(k); ok {
		return e.plan, e.err
	}
	pl, hit, err := p.planShaped(sql, sess, k)
	if !hit {
		// A plan re-bound from a shape template is not cached under its
		// exact text: inlined values make most such texts unique, and the
		// template already serves the next one; caching each would only
		// evict other sessions' plans.
		p.cache.put(k, pl, err)
	}
	return pl, err
}

func (p *Planner) plan(sql string, sess Session) (*Plan, error) {
	return p.planText(sql, sess, false)
}

// planText plans sql; with budget, a long text that must be parsed is
// parsed within the cache's byte budget of long texts (limits.go). Only
// the outermost call takes from the budget: a plan that plans a part of
// its own text (sequelize.go) must not wait for bytes it holds itself.
func (p *Planner) planText(sql string, sess Session, budget bool) (*Plan, error) {
	hits, needParse := p.ix.scan(sql)
	mentions := hits&wordPHI != 0
	if hits == 0 && !needParse {
		return &Plan{SQL: sql, PassThrough: true}, nil
	}
	if mentions && len(sql) > p.maxPHIText {
		return nil, p.tooLong(sql)
	}
	if budget && p.cache != nil && !p.cache.cacheable(sql) {
		// A long text is parsed within the byte budget the sessions
		// sharing the cache have for long texts (limits.go).
		n := p.cache.large.acquire(len(sql))
		defer p.cache.large.release(n)
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		if !mentions {
			// PostgreSQL will report the syntax error itself.
			return &Plan{SQL: sql, PassThrough: true}, nil
		}
		e := pgerr.New(pgerr.SyntaxError, "cannot parse a statement that mentions PHI relation "+p.mentionedRelation(sql)).
			WithHint("fix the syntax: phiproxy refuses what it cannot parse when it names a PHI relation")
		var pe *pgparser.Error
		if errors.As(err, &pe) && pe.Cursorpos > 0 {
			e = e.WithPosition(pe.Cursorpos)
		}
		return nil, e
	}
	if mentions {
		if pos := pg16Number(sql); pos > 0 {
			return nil, pgerr.New(pgerr.SyntaxError, "numeric literal in PostgreSQL 16 syntax (0x, 0o, 0b or _) in a statement that mentions PHI relation "+p.mentionedRelation(sql)).
				WithHint("write the number in decimal without underscores: the PostgreSQL 15 server reads 0x1F as 0 followed by the name x1F, so phiproxy and the server would disagree on the statement").
				WithPosition(pos)
		}
	}
	plan := &Plan{SQL: sql, PassThrough: true}
	// The statements of a string run in order: each is planned with the
	// session state the ones before it leave (thread.go).
	th := NewSequence(sess)
	ddlBefore := false
	var seq *findOrCreate
	if mentions {
		if seq, err = p.sequelizeFindOrCreate(sql, tree, sess); err != nil {
			return nil, err
		}
	}
	for i, raw := range tree.Stmts {
		off := int(raw.StmtLocation)
		n := int(raw.StmtLen)
		if n == 0 {
			n = len(sql) - off
		}
		st := &Statement{Offset: off, Length: n, Tag: tagOf(raw.Stmt)}
		effects(st, raw.Stmt, sql)
		own := false
		if mentions {
			own, _ = p.ix.precheck(sql[off : off+n])
		}
		if !own && NamesAny(sql[off:off+n], th.created) {
			return nil, pgerr.Newf(pgerr.FeatureNotSupported, "phiproxy cannot plan a statement that names a relation created from PHI relations earlier in the same query string").
				WithHint("send it in a query of its own after the DDL has committed")
		}
		switch {
		case seq != nil && i == 0:
			if err := th.usable(p, sql, st); err != nil {
				return nil, err
			}
			seq.apply(st)
		case seq != nil && i == 1:
			seq.applySelect(st)
		case own:
			if err := th.usable(p, sql, st); err != nil {
				return nil, err
			}
			a := &analyzer{p: p, sql: sql, path: th.path, user: th.sess.User, temp: th.sess.Temp, st: st,
				rels: map[string]bool{}, cols: map[string]bool{}, params: map[int]*Param{}, plainParams: map[int]int32{}, sublinks: map[*pg.SubLink]*PHIColumn{}}
			if err := a.top(raw.Stmt); err != nil {
				return nil, err
			}
			a.finish()
		}
		if hits&wordCatalog != 0 && th.unknown == "" && !ddlBefore && sess.Database == p.overlayDB {
			// After DDL in the same string a relation of that name may
			// exist that no snapshot knows: left as written.
			p.overlayEdits(sql, st, raw.Stmt, th.path, th.sess.Temp)
		}
		ddlBefore = ddlBefore || st.Effects&EffectCatalog != 0
		if st.Effects&EffectCatalog != 0 && own && st.TempCreate == "" {
			st.NameDDL = true
		}
		th.After(st)
		if st.Execute != nil {
			// The prepared statement may touch PHI: see BindExecute.
			plan.PassThrough = false
		}
		if len(st.Edits) > 0 {
			// Pinned relation names (pin.go), even on a plain relation.
			plan.PassThrough = false
		}
		if st.TouchesPHI {
			plan.PassThrough = false
			st.audit = &auditText{text: sql[off : off+n]}
		}
		plan.Statements = append(plan.Statements, st)
	}
	if !plan.PassThrough {
		plan.EndUser = endUserTag(sql)
		plan.Tags = commentTags(sql)
	}
	return plan, nil
}

// mentionedRelation names the PHI relation (or view or function over one)
// a refused text means, for messages: the first identifier that is one of
// those names (folded, or quoted exactly), else the first such word in a
// string or comment. Whole tokens only: seq_patients does not name
// patients.
func (p *Planner) mentionedRelation(sql string) string {
	for _, inText := range []bool{false, true} {
		if name := firstNamed(sql, p.pins, inText); name != "" {
			return `"` + name + `"`
		}
	}
	return "(spelled with escapes)"
}

// firstNamed returns the first token of sql that is in names: identifiers
// when !inText, words inside strings and comments when inText.
func firstNamed(sql string, names map[string]bool, inText bool) string {
	word := func(body string) string {
		for i := 0; i < len(body); {
			if !isIdentByte(body[i]) {
				i++
				continue
			}
			j := i
			for j < len(body) && isIdentByte(body[j]) {
				j++
			}
			if w := foldASCII(body[i:j]); names[w] {
				return w
			}
			i = j
		}
		return ""
	}
	found := ""
	complete := scanText(sql, 0, func(k tokenKind, start, end int) bool {
		switch {
		case k == tokWord && !inText:
			if w := foldASCII(sql[start:end]); names[w] {
				found = w
			}
		case k == tokQuoted && !inText:
			if end-start >= 2 {
				if w := strings.ReplaceAll(sql[start+1:end-1], `""`, `"`); names[w] {
					found = w
				}
			}
		case k != tokWord && k != tokQuoted && inText:
			found = word(sql[start:end])
		}
		return found == ""
	})
	if !complete && found == "" {
		return ""
	}
	return found
}

// position converts a byte offset to PostgreSQL's 1-based character
// position.
func position(sql string, loc int32) int {
	if loc < 0 || int(loc) > len(sql) {
		return 0
	}
	return utf8.RuneCountInString(sql[:loc]) + 1
}

func tagOf(n *pg.Node) string {
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		return "SELECT"
	case *pg.Node_InsertStmt:
		return "INSERT"
	case *pg.Node_UpdateStmt:
		return "UPDATE"
	case *pg.Node_DeleteStmt:
		return "DELETE"
	case *pg.Node_MergeStmt:
		return "MERGE"
	case *pg.Node_CopyStmt:
		return "COPY"
	case *pg.Node_ExplainStmt:
		return "EXPLAIN"
	case *pg.Node_TruncateStmt:
		return "TRUNCATE"
	case *pg.Node_PrepareStmt:
		return "PREPARE"
	case *pg.Node_ExecuteStmt:
		return "EXECUTE"
	case *pg.Node_DeallocateStmt:
		return "DEALLOCATE"
	case *pg.Node_VariableSetStmt:
		if x.VariableSetStmt.Kind == pg.VariableSetKind_VAR_RESET || x.VariableSetStmt.Kind == pg.VariableSetKind_VAR_RESET_ALL {
			return "RESET"
		}
		return "SET"
	case *pg.Node_TransactionStmt:
		return strings.ReplaceAll(strings.TrimPrefix(x.TransactionStmt.Kind.String(), "TRANS_STMT_"), "_", " ")
	case *pg.Node_IndexStmt:
		return "CREATE INDEX"
	case *pg.Node_ViewStmt:
		return "CREATE VIEW"
	case *pg.Node_CreateTableAsStmt:
		return "CREATE TABLE AS"
	case *pg.Node_RenameStmt:
		return "ALTER " + strings.TrimPrefix(x.RenameStmt.RenameType.String(), "OBJECT_") + " RENAME"
	case *pg.Node_CreateStmt:
		return "CREATE TABLE"
	case nil:
		return ""
	}
	name := string(n.ProtoReflect().WhichOneof(n.ProtoReflect().Descriptor().Oneofs().Get(0)).Message().Name())
	return nodeTypeTag(name)
}

// nodeTypeTag turns a node type name (CreateTrigStmt) into a readable tag
// (CREATE TRIG).
func nodeTypeTag(name string) string {
	name = strings.TrimSuffix(name, "Stmt")
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

func searchPathValue(args []*pg.Node) string {
	var parts []string
	for _, a := range args {
		s := constText(a)
		if s == "" {
			continue
		}
		if s == strings.ToLower(s) && isPlainIdent(s) {
			parts = append(parts, s)
		} else {
			parts = append(parts, `"`+strings.ReplaceAll(s, `"`, `""`)+`"`)
		}
	}
	return strings.Join(parts, ", ")
}

func isPlainIdent(s string) bool {
	if s == "" || !(s[0] == '_' || s[0] >= 'a' && s[0] <= 'z') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// constText is the text of an A_Const (string, number or boolean).
func constText(n *pg.Node) string {
	c := n.GetAConst()
	if c == nil {
		return ""
	}
	switch v := c.Val.(type) {
	case *pg.A_Const_Sval:
		return v.Sval.Sval
	case *pg.A_Const_Ival:
		return fmt.Sprint(v.Ival.Ival)
	case *pg.A_Const_Fval:
		return v.Fval.Fval
	case *pg.A_Const_Boolval:
		if v.Boolval.Boolval {
			return "true"
		}
		return "false"
	}
	return ""
}

func executeInfo(x *pg.ExecuteStmt, sql string) *Execute {
	e := &Execute{Name: x.Name}
	for _, p := range x.Params {
		arg := ExecArg{Kind: "expr", Offset: -1}
		switch v := p.Node.(type) {
		case *pg.Node_AConst:
			arg.Offset = int(v.AConst.Location)
			if end := literalEnd(sql, arg.Offset); end > 0 {
				arg.Length = end - arg.Offset
				if v.AConst.Isnull {
					arg.Kind = "null"
				} else if v.AConst.GetBsval() == nil {
					arg.Kind = "literal"
					arg.Text = constText(p)
				}
			}
		case *pg.Node_ParamRef:
			arg.Kind = "param"
			arg.Number = int(v.ParamRef.Number)
			arg.Offset = int(v.ParamRef.Location)
		}
		e.Args = append(e.Args, arg)
	}
	return e
}

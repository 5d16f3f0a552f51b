package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// effects records the session state a statement changes; it runs for every
// parsed statement, PHI or not. What it cannot know from the text it marks
// StateUnknown: the proxy then reads the state from the server.
func effects(st *Statement, n *pg.Node, sql string) {
	switch x := n.Node.(type) {
	case *pg.Node_VariableSetStmt:
		v := x.VariableSetStmt
		if v.IsLocal {
			st.Effects |= EffectLocal
		}
		reset := v.Kind == pg.VariableSetKind_VAR_SET_DEFAULT || v.Kind == pg.VariableSetKind_VAR_RESET
		switch strings.ToLower(v.Name) {
		case "search_path":
			st.Effects |= EffectSearchPath
			switch {
			case v.Kind == pg.VariableSetKind_VAR_SET_VALUE:
				st.SearchPath = searchPathValue(v.Args)
			case reset:
				st.PathReset = true
			default:
				st.StateUnknown = true // FROM CURRENT
			}
		case "phiproxy.end_user":
			st.Effects |= EffectEndUser
			if v.Kind == pg.VariableSetKind_VAR_SET_VALUE && len(v.Args) == 1 {
				st.SetEndUser = constText(v.Args[0])
			}
		case "phiproxy.break_glass":
			st.Effects |= EffectBreakGlass
			if v.Kind == pg.VariableSetKind_VAR_SET_VALUE && len(v.Args) == 1 {
				st.SetBreakGlass = constText(v.Args[0])
			}
		case "role":
			st.Effects |= EffectRole
			switch {
			case v.Kind == pg.VariableSetKind_VAR_SET_VALUE && len(v.Args) == 1 && constText(v.Args[0]) != "":
				if r := constText(v.Args[0]); !strings.EqualFold(r, "none") {
					st.Role = r
				}
			case reset:
			default:
				st.StateUnknown = true
			}
		case "session_authorization":
			// Changes the session user, and with it what RESET ROLE returns
			// to: read back from the server.
			st.Effects |= EffectRole
			st.StateUnknown = true
		case "":
			if v.Kind == pg.VariableSetKind_VAR_RESET_ALL {
				// RESET ALL leaves role and session_authorization alone
				// (GUC_NO_RESET_ALL).
				st.Effects |= EffectSearchPath | EffectEndUser | EffectBreakGlass
				st.PathReset = true
			}
		}
	case *pg.Node_TransactionStmt:
		st.Effects |= EffectTransaction
		st.Savepoint = x.TransactionStmt.SavepointName
		st.Chain = x.TransactionStmt.Chain
	case *pg.Node_PrepareStmt:
		st.Effects |= EffectPrepare
		st.Prepare = x.PrepareStmt.Name
	case *pg.Node_ExecuteStmt:
		st.Effects |= EffectExecute
		st.Execute = executeInfo(x.ExecuteStmt, sql)
	case *pg.Node_DeallocateStmt:
		st.Effects |= EffectDeallocate
		st.Deallocate = x.DeallocateStmt.Name
	case *pg.Node_DiscardStmt:
		st.Effects |= EffectDiscard
		switch x.DiscardStmt.Target {
		case pg.DiscardMode_DISCARD_ALL:
			st.Effects |= EffectSearchPath | EffectDeallocate | EffectRole | EffectEndUser | EffectBreakGlass
			st.PathReset, st.TempClear = true, true
			st.CloseAll = true
		case pg.DiscardMode_DISCARD_TEMP:
			st.TempClear = true
		}
	case *pg.Node_DeclareCursorStmt:
		o := x.DeclareCursorStmt.Options
		st.Declare = &Cursor{Name: x.DeclareCursorStmt.Portalname,
			Binary: o&cursorOptBinary != 0, Hold: o&cursorOptHold != 0, Scroll: o&cursorOptScroll != 0}
	case *pg.Node_FetchStmt:
		st.Fetch = x.FetchStmt.Portalname
		st.Move = x.FetchStmt.Ismove
	case *pg.Node_ClosePortalStmt:
		// CLOSE ALL parses with no name.
		st.CloseCursor = x.ClosePortalStmt.Portalname
		st.CloseAll = st.CloseCursor == ""
	case *pg.Node_SelectStmt:
		if into := x.SelectStmt.IntoClause; into != nil {
			st.Effects |= EffectCatalog
			st.TempCreate = tempName(into.Rel)
		}
	case *pg.Node_CreateStmt:
		st.Effects |= EffectCatalog
		st.TempCreate = tempName(x.CreateStmt.Relation)
		st.Creates = x.CreateStmt.Relation.GetRelname()
	case *pg.Node_ExplainStmt:
		// EXPLAIN [ANALYZE] EXECUTE q(…) and EXPLAIN CREATE TABLE … AS
		// EXECUTE q(…) send q's arguments like a bare EXECUTE.
		inner := x.ExplainStmt.Query
		ctas := inner.GetCreateTableAsStmt()
		if ctas != nil {
			st.Effects |= EffectCatalog
			inner = ctas.Query
		}
		if ex := inner.GetExecuteStmt(); ex != nil {
			st.Effects |= EffectExecute
			st.Execute = executeInfo(ex, sql)
			st.Execute.Explain = true
			st.Execute.Analyze = explainAnalyze(x.ExplainStmt)
			st.Execute.CreateTableAs = ctas != nil
		}
	case *pg.Node_CreateTableAsStmt:
		st.Effects |= EffectCatalog
		if x.CreateTableAsStmt.Into != nil {
			st.TempCreate = tempName(x.CreateTableAsStmt.Into.Rel)
			st.Creates = x.CreateTableAsStmt.Into.Rel.GetRelname()
		}
		if ex := x.CreateTableAsStmt.Query.GetExecuteStmt(); ex != nil {
			// CREATE TABLE … AS EXECUTE q(…): see BindExecute.
			st.Effects |= EffectExecute
			st.Execute = executeInfo(ex, sql)
			st.Execute.CreateTableAs = true
		}
	case *pg.Node_ViewStmt:
		st.Effects |= EffectCatalog
		st.TempCreate = tempName(x.ViewStmt.View)
		st.Creates = x.ViewStmt.View.GetRelname()
	case *pg.Node_CreateSeqStmt:
		st.Effects |= EffectCatalog
		st.TempCreate = tempName(x.CreateSeqStmt.Sequence)
	case *pg.Node_DropStmt:
		st.Effects |= EffectCatalog
		d := x.DropStmt
		switch d.RemoveType {
		case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW, pg.ObjectType_OBJECT_MATVIEW,
			pg.ObjectType_OBJECT_SEQUENCE, pg.ObjectType_OBJECT_FOREIGN_TABLE:
			for _, o := range d.Objects {
				if name, ok := tempDropName(o); ok {
					st.TempDrop = append(st.TempDrop, name)
				}
			}
		case pg.ObjectType_OBJECT_SCHEMA:
			st.NameDDL = true
		}
	case *pg.Node_DoStmt, *pg.Node_CallStmt:
		// A block or procedure may SET anything, or create temporary
		// tables.
		st.StateUnknown = true
	case *pg.Node_CreateSchemaStmt, *pg.Node_CreateExtensionStmt, *pg.Node_AlterExtensionStmt,
		*pg.Node_ImportForeignSchemaStmt, *pg.Node_DropOwnedStmt, *pg.Node_ReassignOwnedStmt:
		// These create, move or drop relations without naming them.
		st.Effects |= EffectCatalog
		st.NameDDL = true
	case *pg.Node_RenameStmt:
		st.Effects |= EffectCatalog
		st.Creates = x.RenameStmt.Newname
	case *pg.Node_IndexStmt, *pg.Node_CompositeTypeStmt, *pg.Node_DefineStmt,
		*pg.Node_CreateEnumStmt, *pg.Node_RuleStmt:
		st.Effects |= EffectCatalog
	case nil:
	default:
		tag := st.Tag
		if strings.HasPrefix(tag, "CREATE") || strings.HasPrefix(tag, "ALTER") || strings.HasPrefix(tag, "DROP") {
			st.Effects |= EffectCatalog
		}
	}
	setConfigEffects(st, n)
}

// DECLARE's option bits (PostgreSQL's CURSOR_OPT_*, parsenodes.h).
const (
	cursorOptBinary = 0x0001
	cursorOptScroll = 0x0002
	cursorOptHold   = 0x0020
)

// tempName is the name of a relation created as temporary (TEMP, or in
// schema pg_temp), or "".
func tempName(rv *pg.RangeVar) string {
	if rv == nil {
		return ""
	}
	if rv.Relpersistence == "t" || strings.EqualFold(rv.Schemaname, "pg_temp") {
		return rv.Relname
	}
	return ""
}

// tempDropName is the relation name of a DROP object that may be a
// temporary relation: unqualified, or qualified with pg_temp.
func tempDropName(o *pg.Node) (string, bool) {
	l := o.GetList()
	if l == nil {
		return "", false
	}
	var parts []string
	for _, it := range l.Items {
		parts = append(parts, it.GetString_().GetSval())
	}
	switch {
	case len(parts) == 1:
		return parts[0], true
	case len(parts) == 2 && (parts[0] == "pg_temp" || strings.HasPrefix(parts[0], "pg_temp_")):
		return parts[1], true
	}
	return "", false
}

// setConfigEffects finds set_config calls anywhere in the statement. A
// literal call on search_path or role is a SET (or SET LOCAL); a call on
// another literal name changes nothing the proxy tracks; a call whose
// name or value is computed leaves the state unknown.
func setConfigEffects(st *Statement, n *pg.Node) {
	walkFuncCalls(n.ProtoReflect(), func(fc *pg.FuncCall) {
		if opName(fc.Funcname) != "set_config" {
			return
		}
		if len(fc.Args) != 3 || fc.Args[0].GetAConst() == nil || fc.Args[0].GetAConst().GetSval() == nil {
			st.StateUnknown = true
			return
		}
		name := strings.ToLower(constText(fc.Args[0]))
		if name != "search_path" && name != "role" && name != "session_authorization" {
			return
		}
		val, local := fc.Args[1].GetAConst(), fc.Args[2].GetAConst()
		if name == "session_authorization" || val == nil || val.GetSval() == nil || local == nil || local.GetBoolval() == nil && local.GetSval() == nil {
			st.StateUnknown = true
			return
		}
		isLocal := false
		switch strings.ToLower(constText(fc.Args[2])) {
		case "true", "t", "on", "yes", "1":
			isLocal = true
		case "false", "f", "off", "no", "0":
		default:
			st.StateUnknown = true
			return
		}
		if st.Effects&(EffectSearchPath|EffectRole) != 0 {
			// Two changes in one statement: their order is the executor's.
			st.StateUnknown = true
			return
		}
		if isLocal {
			st.Effects |= EffectLocal
		}
		v := val.GetSval().GetSval()
		if name == "search_path" {
			st.Effects |= EffectSearchPath
			st.SearchPath = v
			return
		}
		st.Effects |= EffectRole
		if !strings.EqualFold(v, "none") {
			st.Role = v
		}
	})
}

// walkFuncCalls calls f for every FuncCall below m.
func walkFuncCalls(m protoreflect.Message, f func(*pg.FuncCall)) {
	walkTree(m, func(m protoreflect.Message) bool {
		if fc, ok := m.Interface().(*pg.FuncCall); ok {
			f(fc)
		}
		return true
	})
}

package rewrite

import (
	"fmt"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"

	"github.com/phiproxy/phiproxy/pgerr"
)

// analyzer plans one statement that mentions a PHI name.
type analyzer struct {
	p           *Planner
	sql         string
	path        []string
	user        string
	temp        string // Session.Temp
	st          *Statement
	rels        map[string]bool
	cols        map[string]bool
	preds       map[string]bool // Statement.Predicates
	writes      map[string]bool // Statement.Writes
	params      map[int]*Param
	plainParams map[int]int32
	actions     []Action
	sublinks    map[*pg.SubLink]*PHIColumn
	// phiRefs counts uses of PHI columns (use), so that a part of a
	// statement that must not read PHI can be checked (phiFree).
	phiRefs int
	// nullTests are $n tested with IS [NOT] NULL, resolved once every
	// use of the parameter is known (resolveNullTests).
	nullTests []nullTest
	ddl       bool
	// pinned holds the offsets of relation references already pinned (or
	// found to be CTE references): see pin.go.
	pinned map[int]bool
}

// top analyzes a statement of the string: the analysis proper, then the
// pinning of the relation references it did not reach.
func (a *analyzer) top(n *pg.Node) error {
	if err := a.statement(n); err != nil {
		return err
	}
	if err := a.resolveNullTests(); err != nil {
		return err
	}
	return a.pinRest(n)
}

func (a *analyzer) finish() {
	st := a.st
	for r := range a.rels {
		st.Relations = append(st.Relations, r)
	}
	for c := range a.cols {
		st.Columns = append(st.Columns, c)
	}
	for c := range a.preds {
		st.Predicates = append(st.Predicates, c)
	}
	for c := range a.writes {
		st.Writes = append(st.Writes, c)
	}
	sort.Strings(st.Predicates)
	sort.Strings(st.Writes)
	sort.Strings(st.Relations)
	sort.Strings(st.Columns)
	for _, p := range a.params {
		st.Params = append(st.Params, *p)
	}
	sort.Slice(st.Params, func(i, j int) bool { return st.Params[i].Number < st.Params[j].Number })
	sort.Slice(st.Slots, func(i, j int) bool { return st.Slots[i].Offset < st.Slots[j].Offset })
	sort.Slice(st.Edits, func(i, j int) bool { return st.Edits[i].Offset < st.Edits[j].Offset })
	if a.ddl {
		// DDL moves no PHI value: it is checked, not audited as a read.
		st.Relations, st.Columns = nil, nil
	}
	st.TouchesPHI = len(st.Relations) > 0
	if !st.TouchesPHI {
		return
	}
	rank := map[Action]int{ActionRead: 1, ActionWrite: 2, ActionDelete: 3, ActionCopyIn: 4, ActionCopyOut: 4}
	st.Action = ActionRead
	for _, ac := range a.actions {
		if rank[ac] > rank[st.Action] {
			st.Action = ac
		}
	}
}

func (a *analyzer) statement(n *pg.Node) error {
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		out, err := a.selectStmt(x.SelectStmt, nil, nil)
		if err != nil {
			return err
		}
		if x.SelectStmt.IntoClause != nil {
			for _, c := range out {
				if c.phi != nil {
					return a.refuseCol(c.phi, -1, "SELECT INTO", "a new table would hold ciphertext outside a configured column; create the table and INSERT ... SELECT into configured PHI columns")
				}
			}
			return nil
		}
		a.actions = append(a.actions, ActionRead)
		return a.results(out)
	case *pg.Node_InsertStmt:
		return a.insert(x.InsertStmt, nil, true)
	case *pg.Node_UpdateStmt:
		return a.update(x.UpdateStmt, nil, true)
	case *pg.Node_DeleteStmt:
		return a.delete(x.DeleteStmt, nil, true)
	case *pg.Node_CopyStmt:
		return a.copy(x.CopyStmt)
	case *pg.Node_ExplainStmt:
		analyze := explainAnalyze(x.ExplainStmt)
		if err := a.statement(x.ExplainStmt.Query); err != nil {
			return err
		}
		a.st.Results = nil
		a.st.Copy = nil
		a.st.Explain = !analyze
		return nil
	case *pg.Node_PrepareStmt:
		if err := a.statement(x.PrepareStmt.Query); err != nil {
			return err
		}
		for i, t := range x.PrepareStmt.Argtypes {
			tn := t.GetTypeName()
			p, ok := a.params[i+1]
			if tn == nil || !ok {
				continue
			}
			end := typeNameEnd(a.sql, int(tn.Location))
			if end < 0 {
				return a.refuseCol(&p.Column, tn.Location, "a declared parameter type", "leave the parameter type out of PREPARE")
			}
			text := "bytea"
			if p.Array {
				text = "bytea[]"
			}
			a.st.Edits = append(a.st.Edits, Edit{Offset: int(tn.Location), Length: end - int(tn.Location), Text: text})
		}
		return nil
	case *pg.Node_TruncateStmt:
		for _, r := range x.TruncateStmt.Relations {
			if rv := r.GetRangeVar(); rv != nil {
				if _, err := a.rangeVar(rv, &scope{}, false); err != nil {
					return err
				}
			}
		}
		a.actions = append(a.actions, ActionDelete)
		return nil
	case *pg.Node_MergeStmt:
		return a.refuseStmt("MERGE", "use INSERT ... ON CONFLICT, or separate UPDATE and INSERT statements")
	case *pg.Node_DoStmt:
		return a.refuseStmt("DO block", "DO blocks are not rewritten: run the statements directly so that phiproxy can encrypt and audit them")
	case *pg.Node_CreateFunctionStmt:
		return a.refuseStmt("CREATE FUNCTION", "function bodies are not rewritten: PHI must be read and written by statements the application sends")
	case *pg.Node_CreateTrigStmt:
		return a.refuseStmt("CREATE TRIGGER", "triggers run server-side on ciphertext; compute in the application")
	case *pg.Node_RuleStmt:
		return a.refuseStmt("CREATE RULE", "rules are not rewritten; use statements the application sends")
	case *pg.Node_CreatePolicyStmt, *pg.Node_AlterPolicyStmt:
		return a.refuseStmt("row-level security policy", "a policy expression runs server-side on ciphertext; base it on non-PHI columns")
	case *pg.Node_DeclareCursorStmt:
		// Planned as its SELECT: the cursor's rows are that SELECT's, read
		// by FETCH later (the proxy keeps Results by cursor name).
		sel := x.DeclareCursorStmt.Query.GetSelectStmt()
		if sel == nil {
			return a.refuseStmt("DECLARE CURSOR", "declare the cursor over a SELECT")
		}
		out, err := a.selectStmt(sel, nil, nil)
		if err != nil {
			return err
		}
		a.actions = append(a.actions, ActionRead)
		return a.results(out)
	case *pg.Node_CreateTableAsStmt:
		a.ddl = true
		out, err := a.selectStmt(x.CreateTableAsStmt.Query.GetSelectStmt(), nil, nil)
		if err != nil {
			return err
		}
		for _, c := range out {
			if c.phi != nil {
				return a.refuseCol(c.phi, -1, "CREATE TABLE AS", "a new table would hold ciphertext outside a configured column; create the table and INSERT ... SELECT into configured PHI columns")
			}
		}
		return nil
	case *pg.Node_ViewStmt:
		a.ddl = true
		sel := x.ViewStmt.Query.GetSelectStmt()
		if sel == nil {
			return a.refuseStmt("CREATE VIEW", "")
		}
		_, err := a.selectStmt(sel, nil, nil)
		return err
	case *pg.Node_AlterTableStmt:
		a.ddl = true
		return a.alterTable(x.AlterTableStmt)
	case *pg.Node_RenameStmt:
		a.ddl = true
		r := x.RenameStmt
		if r.Relation == nil {
			return nil
		}
		src, err := a.rangeVar(r.Relation, &scope{}, false)
		if err != nil {
			return err
		}
		if r.RenameType == pg.ObjectType_OBJECT_TABCONSTRAINT {
			if err := a.envelopeGuard(r.Subname, "renaming constraint"); err != nil {
				return err
			}
			if err := a.envelopeGuard(r.Newname, "renaming a constraint to"); err != nil {
				return err
			}
			return nil
		}
		if !src.hasPHI {
			return nil
		}
		if r.RenameType == pg.ObjectType_OBJECT_COLUMN {
			if c, ok := src.col(r.Subname); ok && c.phi != nil {
				return a.refuseCol(c.phi, -1, "RENAME COLUMN", "rename it in PostgreSQL and in the phi: section together, with phiproxy stopped")
			}
			return nil
		}
		return pgerr.Newf(pgerr.FeatureNotSupported, "renaming PHI relation %s is not supported through phiproxy", src.relIdent).
			WithHint("rename it in PostgreSQL and in the phi: section together, with phiproxy stopped")
	case *pg.Node_AlterObjectSchemaStmt:
		a.ddl = true
		if x.AlterObjectSchemaStmt.Relation == nil {
			return nil
		}
		src, err := a.rangeVar(x.AlterObjectSchemaStmt.Relation, &scope{}, false)
		if err != nil || !a.p.cols.hasRelation(src.schema, src.rel) {
			return err
		}
		return pgerr.Newf(pgerr.FeatureNotSupported, "moving PHI relation %s.%s to another schema is not supported through phiproxy", src.schema, src.rel).
			WithHint("move it in PostgreSQL and in the phi: section together, with phiproxy stopped")
	case *pg.Node_IndexStmt:
		a.ddl = true
		return a.index(x.IndexStmt)
	case *pg.Node_CallStmt:
		if x.CallStmt.Funccall != nil {
			return a.funcCall(x.CallStmt.Funccall, &scope{})
		}
		return nil
	case *pg.Node_VariableSetStmt, *pg.Node_VariableShowStmt, *pg.Node_TransactionStmt, *pg.Node_NotifyStmt,
		*pg.Node_ListenStmt, *pg.Node_UnlistenStmt, *pg.Node_ExecuteStmt, *pg.Node_DeallocateStmt,
		*pg.Node_DiscardStmt, *pg.Node_CheckPointStmt, *pg.Node_GrantStmt, *pg.Node_GrantRoleStmt,
		*pg.Node_CommentStmt, *pg.Node_DropStmt, *pg.Node_VacuumStmt, *pg.Node_LockStmt,
		*pg.Node_ClusterStmt, *pg.Node_ReindexStmt, *pg.Node_AlterOwnerStmt, *pg.Node_ClosePortalStmt,
		*pg.Node_FetchStmt, *pg.Node_CreateSchemaStmt, *pg.Node_CreateRoleStmt, *pg.Node_AlterRoleStmt,
		*pg.Node_DropRoleStmt, *pg.Node_CreateSeqStmt, *pg.Node_AlterSeqStmt, *pg.Node_CreateStmt,
		*pg.Node_SecLabelStmt, *pg.Node_CreateStatsStmt, *pg.Node_AlterDefaultPrivilegesStmt:
		// These move no row data (DDL that creates or drops objects
		// triggers a catalog refresh through Effects).
		return nil
	case *pg.Node_RefreshMatViewStmt:
		return nil
	}
	return a.refuseStmt(a.st.Tag, "this statement type is not supported on PHI relations")
}

// explainAnalyze reports whether EXPLAIN runs its statement (ANALYZE).
func explainAnalyze(x *pg.ExplainStmt) bool {
	analyze := false
	for _, o := range x.Options {
		if d := o.GetDefElem(); d != nil && strings.EqualFold(d.Defname, "analyze") {
			analyze = d.Arg == nil || !strings.EqualFold(defText(d.Arg), "false") && defText(d.Arg) != "0" && !strings.EqualFold(defText(d.Arg), "off")
		}
	}
	return analyze
}

func (a *analyzer) refuseStmt(what, hint string) error {
	e := pgerr.Newf(pgerr.FeatureNotSupported, "%s mentioning PHI relation %s is not supported", what, a.p.mentionedRelation(a.sql[a.st.Offset:a.st.Offset+a.st.Length]))
	if hint != "" {
		e = e.WithHint(hint)
	}
	return e
}

func defText(n *pg.Node) string {
	switch v := n.Node.(type) {
	case *pg.Node_String_:
		return v.String_.Sval
	case *pg.Node_Integer:
		return fmt.Sprint(v.Integer.Ival)
	case *pg.Node_Boolean:
		return fmt.Sprint(v.Boolean.Boolval)
	case *pg.Node_Float:
		return v.Float.Fval
	case *pg.Node_AStar:
		return "*"
	case *pg.Node_List:
		var parts []string
		for _, i := range v.List.Items {
			parts = append(parts, defText(i))
		}
		return strings.Join(parts, ",")
	case *pg.Node_TypeName:
		var parts []string
		for _, i := range v.TypeName.Names {
			parts = append(parts, defText(i))
		}
		return strings.Join(parts, ".")
	}
	return constText(n)
}

// results records the PHI output columns of the top-level statement.
func (a *analyzer) results(out []colInfo) error {
	unknown := false
	for i, c := range out {
		if c.opaque {
			unknown = true
			continue
		}
		if c.phi == nil {
			continue
		}
		if unknown {
			return pgerr.Newf(pgerr.FeatureNotSupported, "cannot tell the output position of PHI column %s: a * before it expands a relation phiproxy does not know", c.phi.Ident).
				WithHint("list the columns instead of *")
		}
		a.st.Results = append(a.st.Results, Result{Position: i, Column: *c.phi})
	}
	return nil
}

package rewrite

import (
	"strconv"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// A CASE or COALESCE written into a PHI column (or, for COALESCE, compared
// with one) only selects one of its branch values: when every branch is a
// value phiproxy can encrypt for the column (a literal, a parameter, NULL)
// or a PHI column sharing its key (the column itself: unchanged), the
// selected value is ciphertext for the column either way, NULL stays NULL,
// and the result is what PostgreSQL would store or compare on plaintext.
// MikroORM's batched flush writes
//
//	SET diagnosis = CASE WHEN (id = $1) THEN $2 WHEN (id = $3) THEN $4 ELSE diagnosis END
//
// and sqlc's optional filters compare ssn = COALESCE($1, ssn).

// caseValue handles a CASE written into the PHI column target. Its
// conditions are evaluated by PostgreSQL on what is stored, so they must
// not read a PHI column: a condition over ciphertext is only refused
// here, never reasoned about.
func (a *analyzer) caseValue(c *pg.CaseExpr, target *PHIColumn, sc *scope) error {
	const what = "CASE"
	if err := a.phiFree(c.Arg, target, sc, "a CASE operand that reads a PHI column"); err != nil {
		return err
	}
	for _, n := range c.Args {
		w := n.GetCaseWhen()
		if w == nil {
			return a.refuseCol(target, c.Location, "this form of CASE", hintCase)
		}
		if err := a.phiFree(w.Expr, target, sc, "a CASE WHEN condition that reads a PHI column"); err != nil {
			return err
		}
		if err := a.branch(w.Result, target, sc, true, what); err != nil {
			return err
		}
	}
	return a.branch(c.Defresult, target, sc, true, what)
}

const hintCase = "write CASE WHEN <condition on non-PHI columns> THEN <literal or $n> ... ELSE <literal, $n, NULL or the column itself> END"

// phiFree analyzes n as a condition (or a value) that must not read any
// PHI column.
func (a *analyzer) phiFree(n *pg.Node, target *PHIColumn, sc *scope, what string) error {
	if n == nil {
		return nil
	}
	before := a.phiRefs
	if err := a.cond(n, sc, "CASE"); err != nil {
		return err
	}
	if a.phiRefs != before {
		return a.refuseCol(target, location(n), what, hintCase)
	}
	return nil
}

// coalesceValue handles COALESCE(v, ...) written into (write) or compared
// with the PHI column target.
func (a *analyzer) coalesceValue(c *pg.CoalesceExpr, target *PHIColumn, sc *scope, write bool) error {
	for _, arg := range c.Args {
		if err := a.branch(arg, target, sc, write, "COALESCE"); err != nil {
			return err
		}
	}
	return nil
}

// branch analyzes one value a CASE or COALESCE may select: nil (a CASE
// without ELSE) is NULL.
func (a *analyzer) branch(n *pg.Node, target *PHIColumn, sc *scope, write bool, what string) error {
	if n == nil {
		return nil
	}
	switch n.Node.(type) {
	case *pg.Node_AConst, *pg.Node_ParamRef, *pg.Node_TypeCast, *pg.Node_ColumnRef:
		return a.value(n, target, sc, write)
	}
	if err := a.plain(n, sc, "an expression in "+what); err != nil {
		return err
	}
	if write {
		return a.refuseCol(target, location(n), "writing an expression ("+describeShort(n)+") in "+what, hintWrite)
	}
	return a.refuseCol(target, location(n), "comparison with an expression ("+describeShort(n)+") in "+what, hintValue)
}

// castBranches handles a CASE or COALESCE (analyzed by branches) cast to
// the PHI column target's logical type as a whole, as Django's bulk_update
// writes on PostgreSQL (with the model field's type: varchar(N) for a
// CharField):
//
//	SET notes = CAST(CASE WHEN (id = 6) THEN 'a' WHEN (id = 9) THEN 'b' ELSE NULL END AS text)
//
// Every branch is then ciphertext for the column (or NULL), so the cast
// becomes a cast to bytea. A type modifier (varchar(11)) is applied by
// PostgreSQL to whichever branch is selected: phiproxy applies it to each
// literal and parameter branch before encrypting, as it does for a cast
// written around the value itself. A branch it cannot apply it to — a
// column (ciphertext), a parameter also used outside the cast, a branch
// with a modifier of its own — is refused, as is a cast to another type.
func (a *analyzer) castBranches(tc *pg.TypeCast, target *PHIColumn, mod string, branches func() error) error {
	t := castTarget(tc.TypeName)
	if err := a.checkCast(target, tc.Location, t, "a cast to "+t, "cast it to "+target.Type+", or leave the cast out"); err != nil {
		return err
	}
	tl, end := a.postfixType(tc)
	if tl < 0 {
		return a.refuseCol(target, tc.Location, "this form of cast", "leave the cast out")
	}
	slots, known := len(a.st.Slots), make(map[int]bool, len(a.params))
	for n := range a.params {
		known[n] = true
	}
	if err := branches(); err != nil {
		return err
	}
	if mod != "" {
		if err := a.modBranches(tc, target, mod, slots, known); err != nil {
			return err
		}
	}
	a.st.Edits = append(a.st.Edits, Edit{Offset: tl, Length: end - tl, Text: "bytea"})
	return nil
}

// modBranches applies the type modifier mod of a cast around a CASE or
// COALESCE to the slots (from index slots on) and parameters (those not in
// known) its branches added.
func (a *analyzer) modBranches(tc *pg.TypeCast, target *PHIColumn, mod string, slots int, known map[int]bool) error {
	refuse := func(loc int32) error {
		return a.refuseCol(target, loc, "a cast with a type modifier around CASE or COALESCE with this branch",
			"write each branch as a literal or a parameter used only there, or leave the modifier out")
	}
	var nodes []*pg.Node
	switch x := tc.Arg.Node.(type) {
	case *pg.Node_CaseExpr:
		for _, n := range x.CaseExpr.Args {
			nodes = append(nodes, n.GetCaseWhen().GetResult())
		}
		nodes = append(nodes, x.CaseExpr.Defresult)
	case *pg.Node_CoalesceExpr:
		nodes = x.CoalesceExpr.Args
	}
	for _, n := range nodes {
		switch x := n.GetNode().(type) {
		case *pg.Node_ColumnRef, *pg.Node_TypeCast:
			return refuse(location(n))
		case *pg.Node_ParamRef:
			if known[int(x.ParamRef.Number)] {
				return refuse(location(n))
			}
		}
	}
	for i := slots; i < len(a.st.Slots); i++ {
		a.st.Slots[i].Cast = mod
	}
	for n, p := range a.params {
		if !known[n] {
			p.Cast = mod
		}
	}
	return nil
}

// nullTest is $n IS [NOT] NULL, or $n::T IS [NOT] NULL; or, with lit
// set, the same test on a literal.
type nullTest struct {
	pr   *pg.ParamRef
	lit  *pg.Node
	cast *pg.TypeCast // nil without a cast
}

// nullTestParam recognises the argument of IS [NOT] NULL that is a
// parameter, possibly cast (sqlc's sqlc.narg: $1::text IS NULL OR ssn = $1).
func nullTestParam(n *pg.Node) (nullTest, bool) {
	switch x := n.GetNode().(type) {
	case *pg.Node_ParamRef:
		return nullTest{pr: x.ParamRef}, true
	case *pg.Node_AConst:
		if !x.AConst.Isnull {
			return nullTest{lit: n}, true
		}
	case *pg.Node_TypeCast:
		tc := x.TypeCast
		if tc.TypeName == nil {
			break
		}
		if pr := tc.Arg.GetParamRef(); pr != nil {
			return nullTest{pr: pr, cast: tc}, true
		}
		if c := tc.Arg.GetAConst(); c != nil && !c.Isnull && len(tc.TypeName.ArrayBounds) == 0 {
			return nullTest{lit: tc.Arg, cast: tc}, true
		}
	}
	return nullTest{}, false
}

// resolveNullTests decides, once every use of each parameter is known,
// what a parameter tested with IS [NOT] NULL is. A parameter bound for a
// PHI column is sent encrypted, and encryption keeps NULL as NULL, so the
// test means on ciphertext what it means on the plaintext: it stays, and a
// cast around it becomes a cast to bytea (the one Bind value is the
// ciphertext). Any other parameter is plain.
func (a *analyzer) resolveNullTests() error {
	for _, nt := range a.nullTests {
		if nt.lit != nil {
			a.literalNullTest(nt)
			continue
		}
		n := int(nt.pr.Number)
		p, ok := a.params[n]
		if !ok {
			if err := a.plainParam(nt.pr); err != nil {
				return err
			}
			continue
		}
		tc := nt.cast
		if tc == nil {
			continue
		}
		tn := tc.TypeName
		elem := opName(tn.Names)
		if t, ok := castTypes[elem]; ok {
			elem = t
		}
		array := len(tn.ArrayBounds) > 0
		if elem == "bytea" {
			return a.refuseBytea(&p.Column, tc.Location)
		}
		if array != p.Array || !compatibleCast(elem, p.Column.Type) {
			return a.refuseCol(&p.Column, tc.Location, "IS NULL on its parameter $"+strconv.Itoa(n)+" cast to another type",
				"cast the parameter to "+p.Column.Type+", or leave the cast out")
		}
		tl := int(tn.Location)
		end := typeNameEnd(a.sql, tl)
		if end < 0 || tl < int(nt.pr.Location) || array && a.sql[end-1] != ']' {
			return a.refuseCol(&p.Column, tc.Location, "this form of cast", "leave the cast out")
		}
		text := "bytea"
		if array {
			text = "bytea[]"
		}
		a.st.Edits = append(a.st.Edits, Edit{Offset: tl, Length: end - tl, Text: text})
	}
	return nil
}

// literalNullTest handles 'v'::T IS [NOT] NULL, which is what a client that
// inlines parameters (simple protocol) makes of sqlc's optional filter:
// ('123-45-6789'::text IS NULL OR ssn = '123-45-6789'). The test's result
// does not depend on the value, but the value is PHI and would reach the
// server in plaintext: when it is the text of a literal encrypted for a PHI
// column in the same statement, it is encrypted for that column too (the
// ciphertext is not NULL, as the literal is not). Whether it matches
// depends on the literals' values: no literal-shape template.
func (a *analyzer) literalNullTest(nt nullTest) {
	a.st.literalDependent = true
	text := constText(nt.lit)
	for _, s := range a.st.Slots {
		if s.Array || s.Text != text {
			continue
		}
		start, end := int(location(nt.lit)), -1
		if nt.cast != nil {
			if !compatibleCast(castTarget(nt.cast.TypeName), s.Column.Type) || len(nt.cast.TypeName.Typmods) > 0 {
				return
			}
			start, end = a.castExtent(nt.cast)
		} else {
			end = literalEnd(a.sql, start)
		}
		if start < 0 || end < 0 {
			return
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: start, Length: end - start, Text: text, Column: s.Column})
		return
	}
}

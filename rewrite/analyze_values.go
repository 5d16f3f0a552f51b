package rewrite

import (
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"

	"github.com/phiproxy/phiproxy/pgerr"
)

// value analyzes n as a value compared with (write=false) or written into
// (write=true) the PHI column target.
func (a *analyzer) value(n *pg.Node, target *PHIColumn, sc *scope, write bool) error {
	a.use(target)
	if write {
		a.wrote(target)
	}
	switch x := n.Node.(type) {
	case *pg.Node_AConst:
		c := x.AConst
		if c.Isnull {
			return nil
		}
		if c.GetBsval() != nil {
			return a.refuseCol(target, c.Location, "a bit-string literal", hintValue)
		}
		return a.constSlot(n, c, target, Slot{Assign: write})
	case *pg.Node_ParamRef:
		return a.phiParam(x.ParamRef, target, false, write, "")
	case *pg.Node_TypeCast:
		return a.castValue(x.TypeCast, target, sc, write)
	case *pg.Node_SetToDefault:
		if write {
			return nil
		}
	case *pg.Node_CaseExpr:
		if write {
			return a.caseValue(x.CaseExpr, target, sc)
		}
	case *pg.Node_CoalesceExpr:
		return a.coalesceValue(x.CoalesceExpr, target, sc, write)
	case *pg.Node_ColumnRef, *pg.Node_SubLink:
		phi, err := a.operand(n, sc)
		if err != nil {
			return err
		}
		if phi == nil {
			if !write {
				return a.refuseCol(target, location(n), "comparison with a non-PHI column", hintValue)
			}
			return a.refuseCol(target, location(n), "writing a non-PHI column or expression into it", hintWrite)
		}
		if !write {
			if err := a.requireDet(phi, location(n), "comparison"); err != nil {
				return err
			}
		}
		if !sameKey(target, phi) {
			if write {
				return a.refuseKeys(phi, target, location(n), "copying")
			}
			return a.refuseKeys(target, phi, location(n), "comparison")
		}
		return nil
	}
	if write {
		if err := a.plain(n, sc, "an expression written into a PHI column"); err != nil {
			return err
		}
		return a.refuseCol(target, location(n), "writing an expression ("+describeShort(n)+")", hintWrite)
	}
	if err := a.plain(n, sc, "an expression compared with a PHI column"); err != nil {
		return err
	}
	return a.refuseCol(target, location(n), "comparison with an expression ("+describeShort(n)+")", hintValue)
}

func describeShort(n *pg.Node) string {
	switch x := n.Node.(type) {
	case *pg.Node_FuncCall:
		return opName(x.FuncCall.Funcname) + "()"
	case *pg.Node_AExpr:
		return "operator " + opName(x.AExpr.Name)
	}
	return strings.TrimPrefix(describe(n), "expression ")
}

// castTypes maps type names as written in casts to logical types.
var castTypes = map[string]string{
	"text": "text", "varchar": "varchar", "character varying": "varchar", "bpchar": "bpchar", "date": "date",
	"timestamp": "timestamp", "timestamptz": "timestamptz", "int4": "int4", "integer": "int4", "int": "int4",
	"int8": "int8", "bigint": "int8", "numeric": "numeric", "decimal": "numeric", "bool": "bool",
	"boolean": "bool", "uuid": "uuid", "jsonb": "jsonb",
}

func castTarget(tn *pg.TypeName) string {
	if tn == nil || len(tn.ArrayBounds) > 0 {
		return ""
	}
	name := opName(tn.Names)
	if t, ok := castTypes[name]; ok {
		return t
	}
	return name
}

// castMod returns the cast's type with its modifier in config's canonical
// spelling ("varchar(3)", "numeric(5,2)", "timestamp(0)"), "" for a cast
// without one; ok is false for a modifier that is not a list of integer
// constants. The proxy applies it as PostgreSQL applies an explicit cast.
// A plan that carries one depends on the modifier's digits, which the
// literal-shape tier treats as literals: it is never a shape template.
func (a *analyzer) castMod(tn *pg.TypeName, base string) (string, bool) {
	if tn == nil || len(tn.Typmods) == 0 {
		return "", true
	}
	var mods []string
	for _, m := range tn.Typmods {
		c := m.GetAConst()
		if c == nil || c.GetIval() == nil {
			return "", false
		}
		mods = append(mods, strconv.Itoa(int(c.GetIval().Ival)))
	}
	if base == "numeric" && len(mods) == 1 {
		mods = append(mods, "0")
	}
	a.st.literalDependent = true
	return base + "(" + strings.Join(mods, ",") + ")", true
}

func (a *analyzer) castValue(tc *pg.TypeCast, target *PHIColumn, sc *scope, write bool) error {
	t := castTarget(tc.TypeName)
	mod, ok := a.castMod(tc.TypeName, t)
	if !ok {
		return a.refuseCol(target, tc.Location, "a cast with this type modifier", "write the modifier as integer constants, or leave the cast out")
	}
	inner := tc.Arg
	switch x := inner.Node.(type) {
	case *pg.Node_AConst:
		if x.AConst.Isnull {
			return a.castNull(tc, target)
		}
		if err := a.checkCast(target, tc.Location, t, "a cast to "+t, "cast the literal to "+target.Type+", or write it without a cast"); err != nil {
			return err
		}
		start, end := a.castExtent(tc)
		if start < 0 {
			return a.refuseCol(target, tc.Location, "this form of cast", "write the literal without a cast")
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: start, Length: end - start, Text: constText(inner), Assign: write, Cast: mod, Column: *target})
		return nil
	case *pg.Node_ParamRef:
		if err := a.checkCast(target, tc.Location, t, "a cast to "+t, "cast the parameter to "+target.Type+", or leave the cast out"); err != nil {
			return err
		}
		tl, end := a.postfixType(tc)
		if tl < 0 {
			return a.refuseCol(target, tc.Location, "this form of cast", "leave the cast out")
		}
		a.st.Edits = append(a.st.Edits, Edit{Offset: tl, Length: end - tl, Text: "bytea"})
		return a.phiParam(x.ParamRef, target, false, write, mod)
	case *pg.Node_CaseExpr:
		if write {
			return a.castBranches(tc, target, mod, func() error { return a.caseValue(x.CaseExpr, target, sc) })
		}
	case *pg.Node_CoalesceExpr:
		return a.castBranches(tc, target, mod, func() error { return a.coalesceValue(x.CoalesceExpr, target, sc, write) })
	}
	return a.refuseCol(target, tc.Location, "comparison with a cast expression", hintValue)
}

// castNull handles NULL::T bound for the PHI column target: NULL stays
// NULL, and a cast to the column's logical type becomes a cast to bytea,
// so that it can be stored in (or compared with) the bytea column, as the
// typed NULL a client that inlines parameters sends. Other casts are left
// for the server to judge, as before.
func (a *analyzer) castNull(tc *pg.TypeCast, target *PHIColumn) error {
	if !compatibleCast(castTarget(tc.TypeName), target.Type) {
		return nil
	}
	tl, end := a.postfixType(tc)
	if tl < 0 {
		return nil
	}
	a.st.Edits = append(a.st.Edits, Edit{Offset: tl, Length: end - tl, Text: "bytea"})
	return nil
}

// checkCast refuses a cast to t written around a value bound for the PHI
// column target: to bytea (the ciphertext's type), or to a type other than
// the column's logical type; what names the cast in the refusal, hint says
// what works.
func (a *analyzer) checkCast(target *PHIColumn, loc int32, t, what, hint string) error {
	if t == "bytea" {
		return a.refuseBytea(target, loc)
	}
	if !compatibleCast(t, target.Type) {
		return a.refuseCol(target, loc, what, hint)
	}
	return nil
}

// postfixType returns where tc's type name starts and ends in the
// statement when the cast is written after its value (value::type), the
// span an edit to bytea replaces; -1, -1 for another form.
func (a *analyzer) postfixType(tc *pg.TypeCast) (int, int) {
	tl := int(tc.TypeName.Location)
	end := typeNameEnd(a.sql, tl)
	if end < 0 || tl < int(location(tc.Arg)) {
		return -1, -1
	}
	return tl, end
}

func compatibleCast(cast, logical string) bool {
	logical = baseType(logical)
	if cast == logical {
		return true
	}
	switch logical {
	case "text", "varchar":
		return cast == "text" || cast == "varchar"
	}
	return false
}

// constSlot adds the literal c (the node n) as a slot for target, the
// slot's flags as in s; a literal whose extent cannot be found in the text
// is refused.
func (a *analyzer) constSlot(n *pg.Node, c *pg.A_Const, target *PHIColumn, s Slot) error {
	end := literalEnd(a.sql, int(c.Location))
	if end < 0 {
		return a.refuseCol(target, c.Location, "this form of literal", "write the value as a plain literal, such as '…' or 42")
	}
	s.Offset, s.Length, s.Text, s.Column = int(c.Location), end-int(c.Location), constText(n), *target
	a.st.Slots = append(a.st.Slots, s)
	return nil
}

// castExtent returns the byte range of a cast around a literal: 'x'::T,
// CAST('x' AS T) or T 'x'.
func (a *analyzer) castExtent(tc *pg.TypeCast) (int, int) {
	cl := int(location(tc.Arg))
	tl := int(tc.TypeName.Location)
	if cl < 0 || tl < 0 {
		return -1, -1
	}
	if tl < cl {
		end := literalEnd(a.sql, cl)
		if end < 0 {
			return -1, -1
		}
		return tl, end
	}
	end := typeNameEnd(a.sql, tl)
	if end < 0 {
		return -1, -1
	}
	loc := int(tc.Location)
	if loc >= 0 && loc < cl && len(a.sql) >= loc+4 && strings.EqualFold(a.sql[loc:loc+4], "cast") {
		k := skipSpace(a.sql, end)
		if k >= len(a.sql) || a.sql[k] != ')' {
			return -1, -1
		}
		return loc, k + 1
	}
	return cl, end
}

// arrayValue handles the right side of col = ANY(...).
func (a *analyzer) arrayValue(n *pg.Node, target *PHIColumn, sc *scope, loc int32) error {
	a.use(target)
	switch x := n.Node.(type) {
	case *pg.Node_ParamRef:
		return a.phiParam(x.ParamRef, target, true, false, "")
	case *pg.Node_AArrayExpr:
		return a.arrayElements(x.AArrayExpr, target, sc)
	case *pg.Node_AConst:
		c := x.AConst
		if c.Isnull {
			return nil
		}
		if c.GetSval() == nil {
			return a.refuseCol(target, c.Location, "= ANY with a literal that is not an array", hintArray)
		}
		return a.constSlot(n, c, target, Slot{Array: true})
	case *pg.Node_TypeCast:
		if tn := x.TypeCast.TypeName; tn != nil && len(tn.ArrayBounds) > 0 {
			return a.arrayCast(x.TypeCast, target, sc)
		}
	}
	if err := a.plain(n, sc, "= ANY(...)"); err != nil {
		return err
	}
	return a.refuseCol(target, loc, "= ANY with an array expression", hintArray)
}

const hintArray = "use IN (...), = ANY('{...}'), = ANY(ARRAY[...]) with literals, or = ANY($n) with an array parameter"

func (a *analyzer) arrayElements(ae *pg.A_ArrayExpr, target *PHIColumn, sc *scope) error {
	for _, e := range ae.Elements {
		if err := a.value(e, target, sc, false); err != nil {
			return err
		}
	}
	return nil
}

// arrayCast handles col = ANY(x::T[]). A cast to bytea[] is refused
// (refuseBytea). For the column's own logical type, an array literal becomes one
// array slot covering the whole cast; ARRAY[...] and $n keep their
// elements' handling and the cast becomes a cast to bytea[].
func (a *analyzer) arrayCast(tc *pg.TypeCast, target *PHIColumn, sc *scope) error {
	elem := opName(tc.TypeName.Names)
	if t, ok := castTypes[elem]; ok {
		elem = t
	}
	tl := int(tc.TypeName.Location)
	end := typeNameEnd(a.sql, tl)
	if end < 0 || a.sql[end-1] != ']' {
		return a.refuseCol(target, tc.Location, "this form of array cast", "write the array type as "+target.Type+"[]")
	}
	if err := a.checkCast(target, tc.Location, elem, "a cast to "+elem+"[]", "cast the array to "+target.Type+"[], or write it without a cast"); err != nil {
		return err
	}
	mod, ok := a.castMod(tc.TypeName, elem)
	if !ok {
		return a.refuseCol(target, tc.Location, "a cast with this type modifier", "write the modifier as integer constants, or leave the cast out")
	}
	toBytea := Edit{Offset: tl, Length: end - tl, Text: "bytea[]"}
	switch x := tc.Arg.Node.(type) {
	case *pg.Node_AConst:
		if x.AConst.Isnull {
			a.st.Edits = append(a.st.Edits, toBytea)
			return nil
		}
		if x.AConst.GetSval() == nil {
			return a.refuseCol(target, x.AConst.Location, "= ANY with a literal that is not an array", hintArray)
		}
		start, cend := a.castExtent(tc)
		if start < 0 || start > int(x.AConst.Location) {
			return a.refuseCol(target, tc.Location, "this form of array cast", "write the array literal without a cast")
		}
		a.st.Slots = append(a.st.Slots, Slot{Offset: start, Length: cend - start, Text: constText(tc.Arg), Array: true, Cast: mod, Column: *target})
		return nil
	case *pg.Node_AArrayExpr:
		if tl < int(x.AArrayExpr.Location) {
			return a.refuseCol(target, tc.Location, "this form of array cast", "write ARRAY[...] without a cast")
		}
		if mod != "" {
			return a.refuseCol(target, tc.Location, "a cast with a type modifier around ARRAY[...]", "cast each element, or leave the modifier out")
		}
		if err := a.arrayElements(x.AArrayExpr, target, sc); err != nil {
			return err
		}
		a.st.Edits = append(a.st.Edits, toBytea)
		return nil
	case *pg.Node_ParamRef:
		if tl < int(x.ParamRef.Location) {
			return a.refuseCol(target, tc.Location, "this form of array cast", "leave the cast out")
		}
		a.st.Edits = append(a.st.Edits, toBytea)
		return a.phiParam(x.ParamRef, target, true, false, mod)
	}
	if err := a.plain(tc.Arg, sc, "= ANY(...)"); err != nil {
		return err
	}
	return a.refuseCol(target, tc.Location, "= ANY with an array expression", hintArray)
}

// phiParam records $n bound for target: written into it (assign) or
// compared with it, through an explicit cast with a modifier (cast, "" for
// none).
func (a *analyzer) phiParam(pr *pg.ParamRef, target *PHIColumn, array, assign bool, cast string) error {
	n := int(pr.Number)
	if _, ok := a.plainParams[n]; ok {
		return a.paramConflict(n, target, pr.Location)
	}
	if p, ok := a.params[n]; ok {
		if !sameKey(&p.Column, target) || p.Array != array {
			return pgerr.Newf(pgerr.FeatureNotSupported, "parameter $%d is bound for PHI columns %s and %s, which do not share a key and type", n, p.Column.Ident, target.Ident).
				WithHint("use a separate parameter for each column").WithPosition(position(a.sql, pr.Location))
		}
		// One value is encrypted once: its uses must agree on what
		// PostgreSQL would make of it (a cast, or a write into a column
		// whose modifier changes the value, against a comparison).
		if p.Cast != cast || p.Assign != assign && baseType(target.Type) != target.Type {
			return pgerr.Newf(pgerr.FeatureNotSupported, "parameter $%d is used for PHI column %s with different casts or both written and compared", n, target.Ident).
				WithHint("use a separate parameter for each use").WithPosition(position(a.sql, pr.Location))
		}
		return nil
	}
	a.params[n] = &Param{Number: n, Array: array, Assign: assign, Cast: cast, Column: *target}
	return nil
}

func (a *analyzer) plainParam(pr *pg.ParamRef) error {
	n := int(pr.Number)
	if p, ok := a.params[n]; ok {
		return a.paramConflict(n, &p.Column, pr.Location)
	}
	a.plainParams[n] = pr.Location
	return nil
}

func (a *analyzer) paramConflict(n int, phi *PHIColumn, loc int32) error {
	return pgerr.Newf(pgerr.FeatureNotSupported, "parameter $%d is bound for PHI column %s and also used as plaintext", n, phi.Ident).
		WithHint("use a separate parameter for each use").WithPosition(position(a.sql, loc))
}

// refuseBytea refuses a cast to bytea (or bytea[]) on a value bound for a
// PHI column. Whatever a client writes for a PHI column is plaintext that
// the proxy encrypts: a bytea value is never taken as ciphertext, so
// neither plaintext behind a forged envelope header nor a ciphertext
// copied from another column can be stored around the proxy's encryption
// (issue 11). The proxy's own rendered text is sent upstream and never
// planned again, so it needs no exception.
func (a *analyzer) refuseBytea(target *PHIColumn, loc int32) error {
	return a.refuseCol(target, loc, "a value cast to bytea", hintBytea)
}

const hintBytea = "drop the ::bytea cast: phiproxy encrypts the plaintext value itself"

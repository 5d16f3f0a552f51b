package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// LogicalType is a PHI column's logical type with its optional type
// modifier, as PostgreSQL writes it: varchar(n), bpchar(n) (char(n)),
// numeric(p,s), timestamp(p), timestamptz(p). Column.Type holds its
// canonical spelling (String), so the modifier travels with the type name
// wherever the type goes.
type LogicalType struct {
	// Name is the canonical base name (see CanonicalType).
	Name string
	// HasMod says a modifier is present: Len for varchar and bpchar,
	// Precision (and Scale) for numeric, Precision (fractional digits of
	// the seconds) for timestamp and timestamptz.
	HasMod    bool
	Len       int
	Precision int
	Scale     int
}

// Limits PostgreSQL puts on modifiers.
const (
	maxCharLen      = 10485760 // MaxAttrSize for varchar and char
	maxNumericPrec  = 1000
	maxTimestampPre = 6
)

// String is the canonical spelling: "varchar(3)", "numeric(5,2)",
// "timestamp(0)", "bpchar(4)", or the bare name.
func (t LogicalType) String() string {
	if !t.HasMod {
		return t.Name
	}
	switch t.Name {
	case "varchar", "bpchar":
		return t.Name + "(" + strconv.Itoa(t.Len) + ")"
	case "numeric":
		return "numeric(" + strconv.Itoa(t.Precision) + "," + strconv.Itoa(t.Scale) + ")"
	}
	return t.Name + "(" + strconv.Itoa(t.Precision) + ")"
}

// Typmod is PostgreSQL's atttypmod for the type, as RowDescription reports
// it: varchar(n) and char(n) n+4, numeric(p,s) ((p<<16)|s)+4, timestamp(p)
// p; -1 without a modifier.
func (t LogicalType) Typmod() int32 {
	if !t.HasMod {
		return -1
	}
	switch t.Name {
	case "varchar", "bpchar":
		return int32(t.Len) + 4
	case "numeric":
		return int32(t.Precision<<16|t.Scale) + 4
	}
	return int32(t.Precision)
}

var (
	// typeWithMod matches a type name, an optional modifier list and, for
	// timestamp, the time zone words that may follow the modifier.
	typeWithMod = regexp.MustCompile(`^([a-z][a-z0-9 ]*?)\s*(?:\(\s*([0-9]+)\s*(?:,\s*([0-9]+)\s*)?\))?(\s+with(?:out)?\s+time\s+zone)?$`)
	spaces      = regexp.MustCompile(`\s+`)
)

// ParseLogicalType parses a logical type as written in the config or in a
// cast: a name of CanonicalType (or char, character, bpchar) with an
// optional modifier. It refuses a modifier on a type that takes none and
// modifiers outside PostgreSQL's limits. char and character without a
// length are char(1), as in PostgreSQL; bpchar needs a length.
func ParseLogicalType(s string) (LogicalType, error) {
	// The canonical spelling, parsed without allocating: the proxy parses
	// a column's type for every value it encodes.
	if t, ok := parseCanonicalType(s); ok {
		return t, nil
	}
	in := spaces.ReplaceAllString(strings.ToLower(strings.TrimSpace(s)), " ")
	m := typeWithMod.FindStringSubmatch(in)
	if m == nil {
		return LogicalType{}, fmt.Errorf("type %q is not one of %s", s, typeList)
	}
	name, zone := m[1], strings.TrimSpace(m[4])
	switch {
	case zone != "" && name == "timestamp":
		name += " " + zone
	case zone != "":
		return LogicalType{}, fmt.Errorf("type %q is not one of %s", s, typeList)
	}
	var t LogicalType
	switch name {
	case "char", "character", "bpchar":
		t.Name = "bpchar"
		if m[2] == "" {
			if name == "bpchar" {
				return LogicalType{}, fmt.Errorf("type %q needs a length: char(n)", s)
			}
			t.HasMod, t.Len = true, 1
		}
	default:
		c, ok := CanonicalType(name)
		if !ok {
			return LogicalType{}, fmt.Errorf("type %q is not one of %s", s, typeList)
		}
		t.Name = c
	}
	if m[2] == "" {
		return t, nil
	}
	a, err1 := strconv.Atoi(m[2])
	b, err2 := 0, error(nil)
	if m[3] != "" {
		b, err2 = strconv.Atoi(m[3])
	}
	if err1 != nil || err2 != nil {
		return LogicalType{}, fmt.Errorf("type %q: modifier out of range", s)
	}
	return withMod(t, a, b, m[3] != "", s)
}

const typeList = "text, varchar(n), char(n), date, timestamp(p), timestamptz(p), int4, int8, numeric(p,s), bool, uuid, jsonb"

func withMod(t LogicalType, a, b int, two bool, src string) (LogicalType, error) {
	t.HasMod = true
	switch t.Name {
	case "varchar", "bpchar":
		if two || a < 1 || a > maxCharLen {
			return LogicalType{}, fmt.Errorf("type %q: length must be between 1 and %d", src, maxCharLen)
		}
		t.Len = a
	case "numeric":
		if a < 1 || a > maxNumericPrec || b > a {
			return LogicalType{}, fmt.Errorf("type %q: precision must be between 1 and %d and scale between 0 and the precision", src, maxNumericPrec)
		}
		t.Precision, t.Scale = a, b
	case "timestamp", "timestamptz":
		if two || a > maxTimestampPre {
			return LogicalType{}, fmt.Errorf("type %q: precision must be between 0 and %d", src, maxTimestampPre)
		}
		t.Precision = a
	default:
		return LogicalType{}, fmt.Errorf("type %q: %s takes no modifier", src, t.Name)
	}
	return t, nil
}

// parseCanonicalType parses what String returns.
func parseCanonicalType(s string) (LogicalType, bool) {
	name, args := s, ""
	if i := strings.IndexByte(s, '('); i >= 0 {
		if !strings.HasSuffix(s, ")") {
			return LogicalType{}, false
		}
		name, args = s[:i], s[i+1:len(s)-1]
	}
	switch name {
	case "bpchar":
		if args == "" {
			return LogicalType{}, false
		}
	default:
		if c, ok := typeAliases[name]; !ok || c != name {
			return LogicalType{}, false
		}
	}
	t := LogicalType{Name: name}
	if args == "" {
		return t, true
	}
	as, bs, two := args, "", false
	if i := strings.IndexByte(args, ','); i >= 0 {
		as, bs, two = args[:i], args[i+1:], true
	}
	a, ok1 := smallInt(as)
	b, ok2 := 0, true
	if two {
		b, ok2 = smallInt(bs)
	}
	if !ok1 || !ok2 {
		return LogicalType{}, false
	}
	t, err := withMod(t, a, b, two, s)
	return t, err == nil
}

func smallInt(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

// BaseType is the logical type's name without its modifier.
func BaseType(logicalType string) string {
	if i := strings.IndexByte(logicalType, '('); i >= 0 {
		return logicalType[:i]
	}
	return logicalType
}

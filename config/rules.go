package config

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/phiproxy/phiproxy/policy"
)

// rawRule is one read or write rule as written.
type rawRule struct {
	Roles  []string  `yaml:"roles"`
	Access string    `yaml:"access"`
	When   yaml.Node `yaml:"when"`
	From   []string  `yaml:"from"`
}

type rawBreakGlass struct {
	Roles []string `yaml:"roles"`
	TTL   string   `yaml:"ttl"`
}

// columnPolicy validates a column's default, read and write rules and
// break_glass into its policy (DESIGN §7); errors name the line.
func (v *validator) columnPolicy(col *Column, rc *rawColumn, path []string) policy.Column {
	var p policy.Column
	def, err := policy.ParseAccess(col.Default)
	if err != nil {
		v.errf(append(path, "default"), "phi column %s: default: %v", col.Ident(), err)
	} else if err := policy.MaskApplies(def, col.Type); err != nil {
		v.errf(append(path, "default"), "phi column %s: default: %v", col.Ident(), err)
	}
	p.Default = def
	for i := range rc.Read {
		if r, ok := v.rule(col, &rc.Read[i], i+1, "read"); ok {
			p.Read = append(p.Read, r)
		}
	}
	for i := range rc.Write {
		if r, ok := v.rule(col, &rc.Write[i], i+1, "write"); ok {
			p.Write = append(p.Write, r)
		}
	}
	if bg := rc.BreakGlass; bg != nil {
		d, err := time.ParseDuration(bg.TTL)
		switch {
		case len(bg.Roles) == 0:
			v.errf(append(path, "break_glass"), "phi column %s: break_glass needs roles", col.Ident())
		case err != nil || d <= 0 || d > 24*time.Hour:
			v.errf(append(path, "break_glass"), "phi column %s: break_glass.ttl %q must be a duration up to 24h, such as 1h", col.Ident(), bg.TTL)
		default:
			p.BreakGlass = &policy.BreakGlass{Roles: bg.Roles, TTL: d}
		}
	}
	// A rule after one that matches everything the first matches can
	// never apply: the same roles, no window, no network bound before it.
	for _, rules := range [][]policy.Rule{p.Read, p.Write} {
		for i := range rules {
			for j := 0; j < i; j++ {
				if len(rules[j].When) == 0 && len(rules[j].From) == 0 && covers(rules[j].Roles, rules[i].Roles) {
					v.errAt(col.Line, "phi column %s: rule %d can never match: rule %d before it matches the same roles at any time from anywhere", col.Ident(), rules[i].Index, rules[j].Index)
					break
				}
			}
		}
	}
	return p
}

// covers says every role of b is in a.
func covers(a, b []string) bool {
	for _, r := range b {
		found := false
		for _, x := range a {
			found = found || x == r
		}
		if !found {
			return false
		}
	}
	return true
}

// rule validates rule n of a column's read or write list.
func (v *validator) rule(col *Column, n *yaml.Node, idx int, list string) (policy.Rule, bool) {
	r := policy.Rule{Index: idx}
	var raw rawRule
	where := fmt.Sprintf("phi column %s: %s rule %d", col.Ident(), list, idx)
	if err := decodeStrict(n, &raw); err != nil {
		v.errAt(n.Line, "%s: %v", where, err)
		return r, false
	}
	ok := true
	bad := func(format string, args ...any) {
		v.errAt(n.Line, where+": "+format, args...)
		ok = false
	}
	if len(raw.Roles) == 0 {
		bad("needs roles: [role, ...] (PostgreSQL roles; membership counts)")
	}
	r.Roles = raw.Roles
	switch list {
	case "read":
		a, err := policy.ParseAccess(raw.Access)
		if err != nil {
			bad("%v", err)
		} else if err := policy.MaskApplies(a, col.Type); err != nil {
			bad("%v", err)
		}
		r.Access = a
	case "write":
		switch raw.Access {
		case "allow":
			r.Allow = true
		case "deny":
		default:
			bad("access %q is not one of allow, deny", raw.Access)
		}
	}
	var windows []string
	switch raw.When.Kind {
	case 0:
	case yaml.ScalarNode:
		windows = []string{raw.When.Value}
	case yaml.SequenceNode:
		for _, w := range raw.When.Content {
			windows = append(windows, w.Value)
		}
	default:
		bad("when must be a window or a list of windows")
	}
	for _, w := range windows {
		win, err := policy.ParseWindow(w)
		if err != nil {
			bad("%v", err)
			continue
		}
		r.When = append(r.When, win)
	}
	for _, f := range raw.From {
		p, err := policy.ParsePrefix(f)
		if err != nil {
			bad("from: %v", err)
			continue
		}
		r.From = append(r.From, p)
	}
	return r, ok
}

// decodeStrict decodes a node refusing unknown keys.
func decodeStrict(n *yaml.Node, out any) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("a rule is a mapping: {roles: [...], access: ..., when: ..., from: [...]}")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i].Value; k {
		case "roles", "access", "when", "from":
		default:
			return fmt.Errorf("unknown key %q (a rule has roles, access, when, from)%s", k, suggest(k, []string{"roles", "access", "when", "from"}))
		}
	}
	return n.Decode(out)
}

// suggest returns ` (did you mean "x"?)` for the closest of names to k
// when it is one or two edits away.
func suggest(k string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(k), n); d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(` (did you mean %q?)`, best)
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// yamlErrorRE matches yaml.v3's messages for unknown keys and wrong types.
var (
	yamlUnknownRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (.+)$`)
	yamlTypeRE    = regexp.MustCompile(`^line (\d+): cannot unmarshal !!(\w+) ` + "`" + `?(.*?)` + "`" + `? into (.+)$`)
)

// yamlError rewrites one of yaml.v3's decoding messages in the file's
// terms: "p.yaml:7: unknown key "defualt" (did you mean "default"?)".
func yamlError(file, msg string) error {
	if m := yamlUnknownRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: unknown key %q%s", file, m[1], m[2], suggest(m[2], knownKeys()))
	}
	if m := yamlTypeRE.FindStringSubmatch(msg); m != nil {
		want := m[4]
		switch {
		case strings.HasPrefix(want, "[]"):
			want = "a list"
		case strings.HasPrefix(want, "map["), strings.HasPrefix(want, "struct"), strings.HasPrefix(want, "config."), strings.HasPrefix(want, "*"):
			want = "a mapping (key: value)"
		case want == "int" || want == "int64":
			want = "a whole number"
		case want == "bool":
			want = "true or false"
		}
		return fmt.Errorf("%s:%s: %s %q where the config wants %s", file, m[1], yamlKind(m[2]), m[3], want)
	}
	return fmt.Errorf("%s: %s", file, msg)
}

func yamlKind(tag string) string {
	switch tag {
	case "str":
		return "the text"
	case "seq":
		return "a list"
	case "map":
		return "a mapping"
	case "int":
		return "the number"
	}
	return "the value"
}

// knownKeys lists every key the config knows, at any depth (for "did you
// mean").
func knownKeys() []string {
	seen := map[string]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || seen[name] {
				continue
			}
			seen[name] = true
			walk(f.Type)
		}
	}
	walk(reflect.TypeOf(raw{}))
	walk(reflect.TypeOf(rawRule{}))
	walk(reflect.TypeOf(rawBreakGlass{}))
	return slices.Sorted(maps.Keys(seen))
}

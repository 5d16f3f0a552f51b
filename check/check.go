package check

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// Severity says how bad a finding is. Errors leave plaintext PHI in the
// database or break data (writes fail, values cannot be read); warnings
// are things that are refused through phiproxy, useless, or slower than
// they should be.
type Severity string

// Severities.
const (
	Error   Severity = "error"
	Warning Severity = "warning"
)

// Finding is one row of the report.
type Finding struct {
	Severity Severity `json:"severity"`
	// Kind is a stable machine name for the finding (KindColumnMissing…),
	// for scripts that act on some findings only.
	Kind string `json:"kind"`
	// Object is what the finding is about, as "column public.patients.ssn",
	// "index public.patients_dx_idx", "trigger t on public.patients".
	Object  string `json:"object"`
	Finding string `json:"finding"`
	Fix     string `json:"fix"`
}

// Kinds of findings (docs/operations.md lists each with its fix).
const (
	KindRelationMissing    = "relation_missing"
	KindRelationNotTable   = "relation_not_table"
	KindColumnMissing      = "column_missing"
	KindColumnNotBytea     = "column_not_bytea"
	KindColumnObserved     = "column_observed"
	KindColumnPlaintext    = "column_plaintext"
	KindValuesUnknownKey   = "values_unknown_key"
	KindValuesOldKey       = "values_old_key"
	KindSampleFailed       = "sample_failed"
	KindConstraintMissing  = "constraint_missing"
	KindConstraintOldForm  = "constraint_old_form"
	KindView               = "view_reads_phi"
	KindMatView            = "matview_reads_phi"
	KindFunction           = "function_reads_phi"
	KindProcedure          = "procedure_reads_phi"
	KindTrigger            = "trigger_on_phi_table"
	KindRule               = "rule_on_phi"
	KindPolicy             = "policy_reads_phi"
	KindIndexRandomized    = "index_on_randomized"
	KindIndexExpression    = "index_expression_on_phi"
	KindIndexOrdering      = "index_ordering_on_phi"
	KindCheckOnPHI         = "check_on_phi"
	KindDefaultOnPHI       = "default_on_phi"
	KindGeneratedFromPHI   = "generated_from_phi"
	KindPartitionKey       = "partition_key_on_phi"
	KindForeignKey         = "foreign_key_on_phi"
	KindKeysUnreadable     = "keys_unreadable"
	KindKeysetMissing      = "keyset_missing"
	KindEventTrigger       = "event_trigger_missing"
	KindOverlayMissing     = "overlay_missing"
	KindOverlayStale       = "overlay_stale"
	KindOverlayUnavailable = "overlay_unknown"
	KindRoleMissing        = "role_missing"
)

// Querier is what Run needs of a connection (*pgx.Conn has it); it only
// reads.
type Querier interface {
	config.Querier
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Input is what Run compares the database with.
type Input struct {
	Config *config.Config
	// ConfigArg names the config file in the fixes ("phiproxy encrypt
	// --config ConfigArg …"); Config.Path when empty.
	ConfigArg string
	// Keysets are the keysets of keys.dir (crypto.Store.List); KeysErr
	// says why they could not be read (the KEK could not be opened, say).
	Keysets []crypto.KeysetInfo
	KeysErr error
	// Overlay is the catalog overlay's state; EventTrigger whether the
	// catalog event triggers are installed (proxy/phi reads both).
	Overlay      OverlayState
	EventTrigger bool
	// SampleSize is how many non-NULL values of each PHI column are
	// looked at (their first bytes only); DefaultSampleSize when 0.
	SampleSize int
}

// OverlayState is the catalog overlay as the proxy sees it.
type OverlayState struct {
	Installed bool  // the overlay's views carry this phiproxy's marker
	Current   bool  // and its PHI map matches the config and catalog
	Err       error // it could not be read
}

// DefaultSampleSize is Input.SampleSize's default.
const DefaultSampleSize = 1000

// Run compares in with the database q is connected to and cat, a catalog
// snapshot just loaded through q for in.Config. It returns the findings
// sorted (errors first, then by object), or an error when the database
// could not be read.
func Run(ctx context.Context, q Querier, cat *config.Catalog, in Input) ([]Finding, error) {
	r := &run{in: in, cfg: in.Config, cat: cat, q: q, fixCfg: in.ConfigArg}
	if r.fixCfg == "" {
		r.fixCfg = in.Config.Path
	}
	if r.in.SampleSize <= 0 {
		r.in.SampleSize = DefaultSampleSize
	}
	r.index()
	for _, step := range []func(context.Context) error{
		r.columns, r.keysets, r.relationDependents, r.functions, r.triggers, r.rules, r.policies,
		r.defaults, r.indexes, r.partitionKeys, r.foreignKeys, r.policyRoles,
	} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	r.catalogNotification()
	Sort(r.out)
	return r.out, nil
}

// run is one Run's state.
type run struct {
	in     Input
	cfg    *config.Config
	cat    *config.Catalog
	q      Querier
	fixCfg string
	out    []Finding

	// tables are the configured PHI tables that exist, by OID.
	tables map[uint32]*config.Relation
	// tableOIDs are their OIDs, for queries.
	tableOIDs []uint32
	// children maps each partition or inheritance child of a PHI table
	// (at any depth) to that PHI table; withChildren is tableOIDs and
	// the children's OIDs, for the objects one can create on a child
	// (triggers, rules, indexes, policies, foreign keys).
	children     map[uint32]*config.Relation
	withChildren []uint32
	// keys maps a key name to its keyset (a loaded one).
	keys map[string]crypto.KeysetInfo
}

func (r *run) add(sev Severity, kind, object, finding, fix string) {
	r.out = append(r.out, Finding{Severity: sev, Kind: kind, Object: object, Finding: finding, Fix: fix})
}

func (r *run) index() {
	r.tables = map[uint32]*config.Relation{}
	for _, rel := range r.cfg.Relations() {
		schema, table := splitRel(rel)
		if t, ok := r.cat.Relation(schema, table); ok {
			r.tables[t.OID] = t
			r.tableOIDs = append(r.tableOIDs, t.OID)
		}
	}
	sort.Slice(r.tableOIDs, func(i, j int) bool { return r.tableOIDs[i] < r.tableOIDs[j] })
	r.children = map[uint32]*config.Relation{}
	r.withChildren = append([]uint32(nil), r.tableOIDs...)
	for _, rel := range r.cat.Relations() {
		if _, ok := r.tables[rel.OID]; ok {
			continue
		}
		if root := r.phiAncestor(rel, 0); root != nil {
			r.children[rel.OID] = root
			r.withChildren = append(r.withChildren, rel.OID)
		}
	}
	r.keys = map[string]crypto.KeysetInfo{}
	for _, ks := range r.in.Keysets {
		if !ks.Ref.IsSigning() {
			r.keys[ks.Ref.Name()] = ks
		}
	}
}

// phiAncestor returns the PHI table rel is a partition or child of.
func (r *run) phiAncestor(rel *config.Relation, depth int) *config.Relation {
	if depth > 64 {
		return nil
	}
	for _, p := range rel.Parents {
		if t, ok := r.tables[p]; ok {
			return t
		}
		if pr, ok := r.cat.RelationByOID(p); ok {
			if t := r.phiAncestor(pr, depth+1); t != nil {
				return t
			}
		}
	}
	return nil
}

// phi returns the PHI column at (rel, attnum): a configured column, or
// the column of a partition or child of a PHI table that has a PHI
// column's name (a child's attnums may differ from its parent's).
func (r *run) phi(rel uint32, num int16) (config.Column, bool) {
	if col, ok := r.cat.PHIColumn(config.ColumnRef{RelOID: rel, Num: num}); ok {
		return col, true
	}
	root, ok := r.children[rel]
	if !ok {
		return config.Column{}, false
	}
	child, _ := r.cat.RelationByOID(rel)
	a, ok := child.ColumnByNum(num)
	if !ok {
		return config.Column{}, false
	}
	return r.cfg.Column(root.Schema, root.Name, a.Name)
}

// onPHITable reports whether rel is a PHI table or a child of one.
func (r *run) onPHITable(rel uint32) bool {
	_, t := r.tables[rel]
	_, c := r.children[rel]
	return t || c
}

// relName is a relation's identity by OID, or its OID when the snapshot
// does not hold it (a system relation).
func (r *run) relName(oid uint32) string {
	if rel, ok := r.cat.RelationByOID(oid); ok {
		return rel.Ident()
	}
	return fmt.Sprintf("relation %d", oid)
}

func splitRel(rel string) (schema, table string) {
	for i := 0; i < len(rel); i++ {
		if rel[i] == '.' {
			return rel[:i], rel[i+1:]
		}
	}
	return "public", rel
}

// Sort orders findings: errors first, then by object, kind and text.
func Sort(fs []Finding) {
	errorsFirst := func(f Finding) int {
		if f.Severity == Error {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(errorsFirst(a), errorsFirst(b)), cmp.Compare(a.Object, b.Object),
			cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Finding, b.Finding))
	})
}

// Summary counts findings by severity.
type Summary struct {
	Errors   int `json:"errors"`
	Warnings int `json:"warnings"`
}

// Summarize counts fs.
func Summarize(fs []Finding) Summary {
	var s Summary
	for _, f := range fs {
		if f.Severity == Error {
			s.Errors++
		} else {
			s.Warnings++
		}
	}
	return s
}

// collect runs sql with args and calls scan for each row.
func collect(ctx context.Context, q Querier, what, sql string, args []any, scan func(pgx.Rows) error) error {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("check: reading %s: %w", what, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("check: reading %s: %w", what, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check: reading %s: %w", what, err)
	}
	return nil
}

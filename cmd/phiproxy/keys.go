package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// keysAction is one `phiproxy keys` action.
type keysAction = action[keysCmd]

// keysCmd holds the parsed flags of every action.
type keysCmd struct {
	cfgPath       string
	key           string
	column        string
	signing       bool
	keyID         string
	force         bool
	confirmUnused bool
	json          bool
	to            string

	cfg *config.Config
}

func keysCommand() *actions[keysCmd] {
	return &actions[keysCmd]{
		name:    "keys",
		head:    "usage: phiproxy keys <action> --config FILE [flags]",
		notes:   "Environment: VAULT_TOKEN (and optionally VAULT_CACERT) for an hcvault:// KEK.\nSee docs/keys.md.",
		actions: keysActions(),
	}
}

func keysActions() map[string]keysAction {
	target := func(fs *pflag.FlagSet, k *keysCmd) {
		fs.StringVar(&k.key, "key", "", "key name (a column's key: setting, by default schema.table.column)")
		fs.StringVar(&k.column, "column", "", "PHI column schema.table.column: its key")
		fs.BoolVar(&k.signing, "signing", false, "the instance's audit-signing keyset")
	}
	return map[string]keysAction{
		"init": {
			summary: "create the KEK file (file: KEKs), keys.dir and every missing keyset",
			run:     keysInit,
		},
		"create": {
			summary: "create the missing keysets of the phi map and the audit-signing keyset",
			run:     keysCreate,
		},
		"rotate": {
			summary: "add a new primary key to a keyset; old keys keep decrypting",
			usage:   "--key NAME | --column SCHEMA.TABLE.COLUMN | --signing",
			flags:   target,
			run:     keysRotate,
		},
		"list": {
			summary: "show key names, key ids, status, mode and creation time (never key material)",
			usage:   "[--json]",
			flags: func(fs *pflag.FlagSet, k *keysCmd) {
				fs.BoolVar(&k.json, "json", false, "print JSON lines instead of a table")
			},
			run: keysList,
		},
		"retire": {
			summary: "delete a non-primary key: values under it become unreadable (crypto-shredding)",
			usage:   "(--key NAME | --column S.T.C | --signing) --key-id ID (--confirm-unused | --force)",
			flags: func(fs *pflag.FlagSet, k *keysCmd) {
				target(fs, k)
				fs.StringVar(&k.keyID, "key-id", "", "id of the key to retire, as keys list shows it")
				fs.BoolVar(&k.confirmUnused, "confirm-unused", false, "retire once the database confirms that no value uses the key any more")
				fs.BoolVar(&k.force, "force", false, "retire even though values may still use the key: they are destroyed")
			},
			run: keysRetire,
		},
		"rewrap": {
			summary: "re-encrypt every keyset file under a new KEK (file or Vault); resumable",
			usage:   "--to KEK_URI",
			flags: func(fs *pflag.FlagSet, k *keysCmd) {
				fs.StringVar(&k.to, "to", "", "the new KEK: file:PATH (created if missing; relative to the config file) or hcvault://HOST/MOUNT/keys/NAME")
			},
			run: keysRewrap,
		},
		"export-public": {
			summary: "print the public audit-signing keyset (Tink JSON) for auditors",
			run:     keysExportPublic,
		},
	}
}

// runKeys dispatches `phiproxy keys ACTION`.
func runKeys(ctx context.Context, env *cmdEnv, args []string) error {
	k := &keysCmd{}
	return keysCommand().runConfigured(ctx, env, args, k, &k.cfgPath, &k.cfg)
}

func (k *keysCmd) store(ctx context.Context) (*crypto.Store, error) {
	st, err := crypto.OpenStore(ctx, k.cfg.Keys, crypto.Options{Env: crypto.EnvFromOS()})
	if err != nil {
		return nil, usageError{err}
	}
	return st, nil
}

// target resolves --key, --column or --signing to one keyset.
func (k *keysCmd) target(action string) (crypto.Ref, error) {
	n := 0
	for _, set := range []bool{k.key != "", k.column != "", k.signing} {
		if set {
			n++
		}
	}
	if n != 1 {
		return crypto.Ref{}, usagef("keys %s: give exactly one of --key NAME, --column SCHEMA.TABLE.COLUMN, --signing", action)
	}
	switch {
	case k.signing:
		return crypto.SigningKey(), nil
	case k.column != "":
		parts := strings.Split(k.column, ".")
		if len(parts) != 3 {
			return crypto.Ref{}, usagef("keys %s: --column %q is not schema.table.column", action, k.column)
		}
		col, ok := k.cfg.Column(parts[0], parts[1], parts[2])
		if !ok {
			return crypto.Ref{}, usagef("keys %s: %s is not a PHI column in %s", action, k.column, k.cfg.Path)
		}
		return crypto.ColumnKey(col.Key), nil
	}
	return crypto.ColumnKey(k.key), nil
}

func keysInit(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	if path, ok := strings.CutPrefix(k.cfg.Keys.KEK, "file:"); ok {
		created, err := crypto.InitFileKEK(path)
		if err != nil {
			return usageError{err}
		}
		if created {
			fmt.Fprintf(env.stdout, "created KEK file %s (mode 0600): back it up apart from keys.dir and from the database\n", path)
		} else {
			fmt.Fprintf(env.stdout, "KEK file %s exists: kept\n", path)
		}
	} else {
		fmt.Fprintf(env.stdout, "KEK is %s: nothing to create (the transit key lives in Vault)\n", k.cfg.Keys.KEK)
	}
	return keysCreate(ctx, env, k)
}

func keysCreate(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	st, err := k.store(ctx)
	if err != nil {
		return err
	}
	err = st.CreateAll(k.cfg, func(r crypto.Ref, cols []config.Column, created bool) {
		verb := "exists"
		if created {
			verb = "created"
		}
		if r.IsSigning() {
			fmt.Fprintf(env.stdout, "audit-signing keyset (ed25519): %s\n", verb)
		} else {
			fmt.Fprintf(env.stdout, "key %s (%s, %s): %s\n", r.Name(), cols[0].Mode, columnList(cols), verb)
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "keys dir: %s\n", st.Dir())
	return nil
}

func columnList(cols []config.Column) string {
	ids := make([]string, len(cols))
	for i, c := range cols {
		ids[i] = c.Ident()
	}
	return strings.Join(ids, ", ")
}

func keysRotate(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	ref, err := k.target("rotate")
	if err != nil {
		return err
	}
	st, err := k.store(ctx)
	if err != nil {
		return err
	}
	id, err := st.Rotate(ref)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s: new primary key id %d; older keys keep decrypting\n", ref, id)
	fmt.Fprintln(env.stdout, "Send SIGHUP to running proxies so they encrypt with it; `phiproxy reencrypt` moves existing values to it.")
	return recordAudit(ctx, env, k.cfg, audit.ActionKeyRotated, fmt.Sprintf("%s: new primary key id %d (phiproxy keys rotate)", ref, id))
}

func keysRetire(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	ref, err := k.target("retire")
	if err != nil {
		return err
	}
	if k.keyID == "" {
		return usagef("keys retire: --key-id ID is required (see `phiproxy keys list`)")
	}
	id, err := strconv.ParseUint(k.keyID, 0, 32)
	if err != nil {
		return usagef("keys retire: --key-id %q is not a key id (a number as `keys list` shows it)", k.keyID)
	}
	if !k.confirmUnused && !k.force {
		return usagef("keys retire: retiring key id %d of %s makes every value still encrypted under it unreadable, for good.\n"+
			"Re-encrypt the data first and check that no value uses the key (docs/keys.md shows the query), then pass --confirm-unused;\n"+
			"pass --force to destroy the values that may remain (crypto-shredding)", id, ref)
	}
	if !k.force && !ref.IsSigning() {
		if err := checkUnused(ctx, env, k.cfg, ref, uint32(id)); err != nil {
			return err
		}
	}
	st, err := k.store(ctx)
	if err != nil {
		return err
	}
	if err := st.Retire(ref, uint32(id)); err != nil {
		return usageError{err}
	}
	fmt.Fprintf(env.stdout, "%s: retired key id %d\n", ref, id)
	if k.force {
		fmt.Fprintln(env.stdout, "WARNING: --force: values still under this key are now unreadable (crypto-shredded) once no backup of the old keyset file remains.")
	}
	fmt.Fprintln(env.stdout, "Send SIGHUP to running proxies; delete or expire keyset backups that still hold the key to complete the shredding.")
	return recordAudit(ctx, env, k.cfg, audit.ActionKeyRetired, fmt.Sprintf("%s: retired key id %d (phiproxy keys retire, force=%v)", ref, id, k.force))
}

// listRow is one key of `keys list`; with --json it is printed as is.
type listRow struct {
	Key     string    `json:"key"`
	Mode    string    `json:"mode"`
	KeyID   uint32    `json:"key_id"`
	Status  string    `json:"status"`
	Created time.Time `json:"created,omitzero"`
	Retired time.Time `json:"retired,omitzero"`
	Prefix  string    `json:"prefix"` // bytea hex every value under the key starts with
	Columns string    `json:"columns"`
}

func keysList(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	st, err := k.store(ctx)
	if err != nil {
		return err
	}
	sets, err := st.List()
	if err != nil {
		return err
	}
	names := k.cfg.KeyNames()
	seen := map[string]bool{}
	var rows []listRow
	for _, ks := range sets {
		mode, cols := ks.Mode, "(not in config)"
		if ks.Ref.IsSigning() {
			mode, cols = "ed25519", "(audit checkpoints)"
		} else if c, ok := names[ks.Ref.Name()]; ok {
			cols = columnList(c)
			seen[ks.Ref.Name()] = true
		}
		for _, key := range ks.Keys {
			prefix := fmt.Sprintf(`\x%x`, crypto.KeyPrefix(key.ID))
			if ks.Ref.IsSigning() {
				prefix = ""
			}
			rows = append(rows, listRow{Key: ks.Ref.Name(), Mode: mode, KeyID: key.ID, Status: key.Status,
				Created: key.Created, Retired: key.Retired, Prefix: prefix, Columns: cols})
		}
	}
	var missing []string
	for n, cols := range names {
		if !seen[n] {
			missing = append(missing, n)
			rows = append(rows, listRow{Key: n, Mode: cols[0].Mode, Status: "missing", Columns: columnList(cols)})
		}
	}
	sort.Strings(missing)
	if k.json {
		enc := json.NewEncoder(env.stdout)
		for _, r := range rows {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	} else {
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tMODE\tKEY ID\tSTATUS\tCREATED\tPREFIX\tCOLUMNS")
		for _, r := range rows {
			id, created := strconv.FormatUint(uint64(r.KeyID), 10), "-"
			if r.Status == "missing" {
				id = "-"
			}
			if !r.Created.IsZero() {
				created = r.Created.UTC().Format(time.RFC3339)
			}
			status := r.Status
			if !r.Retired.IsZero() {
				status += " " + r.Retired.UTC().Format(time.RFC3339)
			}
			prefix := r.Prefix
			if prefix == "" {
				prefix = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Key, r.Mode, id, status, created, prefix, r.Columns)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		return findingsError{fmt.Errorf("keys list: no keyset for %s; run `phiproxy keys create --config %s`", strings.Join(missing, ", "), k.cfgPath)}
	}
	return nil
}

func keysExportPublic(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	st, err := k.store(ctx)
	if err != nil {
		return err
	}
	pub, err := st.ExportPublic()
	if err != nil {
		return err
	}
	_, err = env.stdout.Write(pub)
	if err == nil && (len(pub) == 0 || pub[len(pub)-1] != '\n') {
		_, err = io.WriteString(env.stdout, "\n")
	}
	return err
}

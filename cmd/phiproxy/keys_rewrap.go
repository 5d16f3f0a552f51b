package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// keysRewrap re-encrypts every keyset file under the KEK --to names. The
// config still names the old KEK: the operator switches keys.kek once the
// run succeeded (docs/keys.md, quarterly KEK rotation).
func keysRewrap(ctx context.Context, env *cmdEnv, k *keysCmd) error {
	if k.to == "" {
		return usagef("keys rewrap: --to KEK_URI is required (file:PATH or hcvault://HOST/MOUNT/keys/NAME)")
	}
	to, err := config.ResolveKEK(k.to, k.cfg.Dir(), "--to")
	if err != nil {
		return usageError{err}
	}
	if path, ok := strings.CutPrefix(to, "file:"); ok {
		created, err := crypto.InitFileKEK(path)
		if err != nil {
			return usageError{err}
		}
		if created {
			fmt.Fprintf(env.stdout, "created KEK file %s (mode 0600): back it up apart from keys.dir and from the database\n", path)
		}
	}
	st, err := k.store(ctx)
	if err != nil {
		return err
	}
	res, err := st.Rewrap(ctx, to)
	for _, r := range res.Rewrapped {
		fmt.Fprintf(env.stdout, "%s: rewrapped under %s\n", r, k.to)
	}
	for _, r := range res.Already {
		fmt.Fprintf(env.stdout, "%s: already under %s (an earlier run)\n", r, k.to)
	}
	if err != nil {
		return runtimeError{fmt.Errorf("keys rewrap: %w; fix it and run the same command again: it resumes", err)}
	}
	fmt.Fprintf(env.stdout, "every keyset of %s is under %s.\nNow set keys.kek to %q in %s and send SIGHUP to running proxies; keep the old KEK until they all reloaded, then destroy it with its backups.\n",
		st.Dir(), k.to, k.to, k.cfgPath)
	next := *k.cfg
	next.Keys.KEK = to
	return recordAudit(ctx, env, &next, audit.ActionKeyRotated,
		fmt.Sprintf("KEK rewrap: %d keysets re-encrypted under %s (phiproxy keys rewrap)", len(res.Rewrapped)+len(res.Already), to))
}

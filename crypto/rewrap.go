package crypto

import (
	"context"
	"fmt"
)

// RewrapResult names the keysets Rewrap re-encrypted and those it found
// already under the new KEK (an earlier, interrupted run did them).
type RewrapResult struct {
	Rewrapped []Ref
	Already   []Ref
}

// Rewrap re-encrypts every keyset file of keys.dir under the KEK toURI
// (resolved as config does: file:/ABS/PATH or hcvault://…), so that the
// KEK can be rotated or moved (file → file, file → Vault, Vault → Vault).
// The keys inside do not change: no value needs re-encrypting.
//
// Each file is replaced atomically (temp file, fsync, rename) under
// keys.dir's lock. Rewrap is resumable: a file that the current KEK cannot
// open but the new one can was rewrapped by an interrupted run and is
// left alone. When toURI is the current KEK (a Vault transit key after
// `vault write -f transit/keys/NAME/rotate`), every file is re-encrypted,
// which moves it to the key's newest version. Until keys.kek names the new
// KEK, a reload of a running proxy fails and keeps the keys it has.
func (s *Store) Rewrap(ctx context.Context, toURI string) (RewrapResult, error) {
	var res RewrapResult
	to, err := OpenKEK(ctx, toURI, s.opts.Env)
	if err != nil {
		return res, err
	}
	unlock, err := s.lock()
	if err != nil {
		return res, err
	}
	defer unlock()
	refs, err := keysetRefs(s.dir)
	if err != nil {
		return res, fmt.Errorf("keys dir: %w", err)
	}
	same := to.uri == s.kek.uri
	for _, r := range refs {
		l, err := readKeyset(s.dir, r, s.kek.aead)
		if err != nil {
			if same {
				return res, err
			}
			if _, err2 := readKeyset(s.dir, r, to.aead); err2 == nil {
				res.Already = append(res.Already, r)
				continue
			}
			return res, fmt.Errorf("%w (nor does the new KEK %s open it)", err, toURI)
		}
		if err := writeKeyset(s.dir, l, to.aead); err != nil {
			return res, err
		}
		// Read back under the new KEK before going on: a KEK that
		// encrypts but cannot decrypt must not cost the keyset.
		if _, err := readKeyset(s.dir, r, to.aead); err != nil {
			return res, fmt.Errorf("%s: rewrapped file does not open under %s: %w", r, toURI, err)
		}
		res.Rewrapped = append(res.Rewrapped, r)
	}
	return res, nil
}

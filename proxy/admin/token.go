package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Token is the admin bearer token, kept as its SHA-256 digest only:
// comparing digests in constant time hides the token's length too.
type Token struct{ digest [sha256.Size]byte }

// LoadToken reads the bearer token from path: the file's content without
// surrounding white space. Like the file KEK, the file must be a regular
// file owned by the user running phiproxy that neither group nor others
// can read or write (chmod 600); an empty token is refused.
func LoadToken(path string) (Token, error) {
	return loadToken(path, os.Getuid())
}

// ReadToken returns the token itself, after the same checks as
// LoadToken: for a client of the admin API (phiproxy lockdown).
func ReadToken(path string) (string, error) {
	b, err := readToken(path, os.Getuid())
	return string(b), err
}

func loadToken(path string, uid int) (Token, error) {
	b, err := readToken(path, uid)
	if err != nil {
		return Token{}, err
	}
	return Token{sha256.Sum256(b)}, nil
}

func readToken(path string, uid int) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("admin token file %s does not exist; write a long random token into it (for example: openssl rand -hex 32 > %s; chmod 600 %s)", path, path, path)
		}
		return nil, fmt.Errorf("admin token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("admin token file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("admin token file %s has mode %04o: refusing a token that group or others can access; run chmod 600 %s", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid {
		return nil, fmt.Errorf("admin token file %s is not owned by the user running phiproxy (uid %d); chown it to that user", path, uid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin token file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("admin token file %s is empty", path)
	}
	return b, nil
}

// matches reports whether presented is the token, in constant time.
func (t *Token) matches(presented []byte) bool {
	d := sha256.Sum256(presented)
	return subtle.ConstantTimeCompare(d[:], t.digest[:]) == 1
}

package crypto

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// fakeVault implements the two Vault Transit endpoints tink-go-hcvault
// calls: PUT /v1/MOUNT/encrypt/NAME and /v1/MOUNT/decrypt/NAME with
// base64 plaintext and associated_data, answering Vault's JSON.
type fakeVault struct {
	token string
	key   string // transit key name
	aead  tink.AEAD
	calls atomic.Int64
}

func newFakeVault(t *testing.T, token, key string) (*fakeVault, *httptest.Server, string) {
	t.Helper()
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	a, err := aead.New(h)
	if err != nil {
		t.Fatal(err)
	}
	fv := &fakeVault{token: token, key: key, aead: a}
	srv := httptest.NewTLSServer(fv)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "vault-ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return fv, srv, ca
}

func (fv *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fv.calls.Add(1)
	fail := func(code int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{msg}})
	}
	if r.Header.Get("X-Vault-Token") != fv.token {
		fail(http.StatusForbidden, "permission denied")
		return
	}
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "method")
		return
	}
	var req struct {
		Plaintext      string `json:"plaintext"`
		Ciphertext     string `json:"ciphertext"`
		AssociatedData string `json:"associated_data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(http.StatusBadRequest, "bad json")
		return
	}
	ad, err := base64.StdEncoding.DecodeString(req.AssociatedData)
	if err != nil {
		fail(http.StatusBadRequest, "bad associated_data")
		return
	}
	var data map[string]any
	switch r.URL.Path {
	case "/v1/transit/encrypt/" + fv.key:
		pt, err := base64.StdEncoding.DecodeString(req.Plaintext)
		if err != nil {
			fail(http.StatusBadRequest, "bad plaintext")
			return
		}
		ct, err := fv.aead.Encrypt(pt, ad)
		if err != nil {
			fail(http.StatusInternalServerError, err.Error())
			return
		}
		data = map[string]any{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(ct)}
	case "/v1/transit/decrypt/" + fv.key:
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(req.Ciphertext, "vault:v1:"))
		if err != nil {
			fail(http.StatusBadRequest, "bad ciphertext")
			return
		}
		pt, err := fv.aead.Decrypt(raw, ad)
		if err != nil {
			fail(http.StatusBadRequest, "cipher: message authentication failed")
			return
		}
		data = map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)}
	default:
		fail(http.StatusNotFound, "no handler for route "+r.URL.Path)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"data": data})
}

func TestVaultKEK(t *testing.T) {
	fv, srv, ca := newFakeVault(t, "s.goodtoken", "phiproxy")
	host := strings.TrimPrefix(srv.URL, "https://")
	uri := "hcvault://" + host + "/transit/keys/phiproxy"
	cfg := writeConfig(t, t.TempDir(), uri, testPHI)
	if cfg.Keys.KEK != uri {
		t.Fatalf("config KEK %q", cfg.Keys.KEK)
	}
	env := Env{VaultToken: "s.goodtoken", VaultCACert: ca}
	ctx := context.Background()

	st, err := OpenStore(ctx, cfg.Keys, Options{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Create(ColumnKey("public.patients.ssn"), "deterministic"); err != nil {
		t.Fatal(err)
	}
	if fv.calls.Load() == 0 {
		t.Fatal("the keyset was not encrypted through Vault")
	}
	for name, cols := range cfg.KeyNames() {
		if _, err := st.Create(ColumnKey(name), cols[0].Mode); err != nil {
			t.Fatal(err)
		}
	}
	kr, err := Open(ctx, cfg, Options{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	e, err := kr.Encrypt("public.patients.ssn", []byte("123-45-6789"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := kr.Decrypt("public.patients.ssn", e); err != nil || string(pt) != "123-45-6789" {
		t.Fatalf("round trip under a Vault KEK: %q, %v", pt, err)
	}

	tests := []struct {
		name    string
		uri     string
		env     Env
		wantErr string
	}{
		{"a wrong token is refused and the KEK named", uri, Env{VaultToken: "s.wrong", VaultCACert: ca}, "vault KEK " + uri},
		{"no token says to set VAULT_TOKEN", uri, Env{VaultCACert: ca}, "VAULT_TOKEN"},
		{"an untrusted certificate is refused", uri, Env{VaultToken: "s.goodtoken"}, "certificate"},
		{"a transit key Vault does not have is reported", "hcvault://" + host + "/transit/keys/other", env, "404"},
		{"a malformed key path is refused", "hcvault://" + host + "/transit/phiproxy", env, "MOUNT/keys/NAME"},
		{"an unreadable VAULT_CACERT is reported", uri, Env{VaultToken: "s.goodtoken", VaultCACert: ca + ".missing"}, "VAULT_CACERT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *cfg
			c.Keys.KEK = tt.uri
			_, err := Open(ctx, &c, Options{Env: tt.env})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open: %v; want an error containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "s.goodtoken") {
				t.Fatal("the error holds the Vault token")
			}
		})
	}

	// Another Vault whose transit key has the same name but other material
	// cannot open the keysets: they are bound to the KEK that wrote them.
	_, srv2, ca2 := newFakeVault(t, "s.goodtoken", "phiproxy")
	c := *cfg
	c.Keys.KEK = "hcvault://" + strings.TrimPrefix(srv2.URL, "https://") + "/transit/keys/phiproxy"
	if _, err := Open(ctx, &c, Options{Env: Env{VaultToken: "s.goodtoken", VaultCACert: ca2}}); err == nil || !strings.Contains(err.Error(), "wrong KEK") {
		t.Fatalf("Open under another Vault key: %v", err)
	}
}

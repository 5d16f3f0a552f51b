package crypto_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// Every type that holds key material or plaintext logs as REDACTED, with
// slog and with fmt.
func Example_redaction() {
	dir, _ := os.MkdirTemp("", "phiproxy-example")
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "phiproxy.yaml")
	_ = os.WriteFile(cfgPath, []byte(`listen: 127.0.0.1:6432
upstream: {address: 127.0.0.1:5432}
catalog_dsn: postgres://cat@127.0.0.1/db
phi:
  public.patients:
    ssn: {type: text, mode: deterministic}
`), 0o600)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	_, _ = crypto.InitFileKEK(filepath.Join(dir, "kek.json"))
	store, _ := crypto.OpenStore(ctx, cfg.Keys, crypto.Options{})
	_, _ = store.Create(crypto.ColumnKey("public.patients.ssn"), config.ModeDeterministic)
	_, _ = store.Create(crypto.SigningKey(), "")
	ring, err := crypto.Open(ctx, cfg, crypto.Options{Env: crypto.Env{VaultToken: "s.secret"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	cipher, _ := ring.Cipher("public.patients.ssn")
	signer, _ := ring.Signer()
	kek, _ := crypto.OpenKEK(ctx, cfg.Keys.KEK, crypto.Env{})

	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	log.Info("keys", "ring", ring, "cipher", cipher, "signer", signer, "kek", kek, "store", store)
	log.Info("value", "ssn", crypto.Plaintext("123-45-6789"), "env", crypto.Env{VaultToken: "s.secret"})
	fmt.Printf("%v %s %x %#v\n", crypto.Plaintext("123-45-6789"), cipher, crypto.Plaintext("123"), crypto.Plaintext("123"))
	// Output:
	// level=INFO msg=keys ring=REDACTED cipher=REDACTED signer=REDACTED kek=REDACTED store=REDACTED
	// level=INFO msg=value ssn=REDACTED env=REDACTED
	// REDACTED REDACTED 5245444143544544 REDACTED
}

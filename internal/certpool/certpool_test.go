package certpool

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/pgcluster"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	ca, err := pgcluster.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	pool, err := Load(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("a certificate the CA issued does not verify with the pool: %v", err)
	}
	for _, tc := range []struct{ path, want string }{
		{notPEM, "holds no PEM certificate"},
		{filepath.Join(dir, "missing.pem"), "no such file"},
	} {
		if _, err := Load(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("Load(%s): %v, want an error naming the file: %q", tc.path, err, tc.want)
		}
	}
}

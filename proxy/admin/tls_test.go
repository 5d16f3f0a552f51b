package admin

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/pgcluster"
)

// With admin.cert/key the API is HTTPS only, the token still required.
func TestAdminOverTLS(t *testing.T) {
	ca, err := pgcluster.NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}

	s, err := New(&config.Admin{Listen: "127.0.0.1:0", TokenFile: writeToken(t, testToken, 0o600), Cert: certPath, Key: keyPath}, NewMetrics(nil), Readiness{Upstream: closedAddr(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer s.Shutdown(context.Background())

	if resp, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served over a TLS admin listener")
		}
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	for _, c := range []struct {
		path, auth string
		want       int
	}{{"/healthz", "", 200}, {"/metrics", "", 401}, {"/metrics", "Bearer " + testToken, 200}} {
		if code, _ := testenv.HTTPGet(t, client, "https://"+ln.Addr().String()+c.path, c.auth); code != c.want {
			t.Errorf("%s (Authorization %q) over TLS: %d; want %d", c.path, c.auth, code, c.want)
		}
	}
}

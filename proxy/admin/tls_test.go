package admin

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/phiproxy/phiproxy/config"
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
		path, tok string
		want      int
	}{{"/healthz", "", 200}, {"/metrics", "", 401}, {"/metrics", testToken, 200}} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+ln.Addr().String()+c.path, nil)
		if c.tok != "" {
			req.Header.Set("Authorization", "Bearer "+c.tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s over TLS: %v", c.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s (token %q) over TLS: %d; want %d", c.path, c.tok, resp.StatusCode, c.want)
		}
	}
}

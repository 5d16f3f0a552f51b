package testenv

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHTTPGet(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Header["Authorization"]; !ok {
			http.Error(w, "who", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(r.URL.Path + " for " + r.Header.Get("Authorization")))
	}))
	defer srv.Close()
	if code, body := HTTPGet(t, srv.Client(), srv.URL+"/x", "Bearer t"); code != 200 || body != "/x for Bearer t" {
		t.Errorf("with a token: %d %q", code, body)
	}
	if code, body := HTTPGet(t, srv.Client(), srv.URL+"/x", ""); code != 401 || body != "who\n" {
		t.Errorf("without one: %d %q; want no Authorization header sent", code, body)
	}
}

package testenv

import (
	"io"
	"net/http"
	"testing"
)

// HTTPGet requests url with client (http.DefaultClient when nil) and the
// header "Authorization: auth" (none when auth is empty), and returns the
// answer's status and body. It fails t when the request fails.
func HTTPGet(t testing.TB, client *http.Client, url, auth string) (int, string) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

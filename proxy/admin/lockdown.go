package admin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/phiproxy/phiproxy/proxy/phi"
)

// Lockdown is the switch the admin API serves (*phi.Proxy).
type Lockdown interface {
	Lockdown() phi.LockdownStatus
	SetLockdown(ctx context.Context, on bool, reason, by string) error
}

// LockdownRequest is POST /lockdown's body.
type LockdownRequest struct {
	On     bool   `json:"on"`
	Reason string `json:"reason"`
	// By names who asks (the CLI sends the operator's user name); the
	// client's address is recorded with it.
	By string `json:"by"`
}

// lockdownGet answers the switch's state as JSON.
func (s *Server) lockdownGet(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.ready.Lockdown.Lockdown())
}

// lockdownPost switches lockdown on or off ({"on": bool, "reason": "…",
// "by": "…"}); 400 without a reason; the state as JSON after.
func (s *Server) lockdownPost(w http.ResponseWriter, r *http.Request) {
	var req LockdownRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "body must be JSON {\"on\": true|false, \"reason\": \"…\", \"by\": \"…\"}", http.StatusBadRequest)
		return
	}
	by := "admin API from " + r.RemoteAddr
	if req.By != "" {
		by = req.By + " (" + by + ")"
	}
	if err := s.ready.Lockdown.SetLockdown(r.Context(), req.On, req.Reason, by); err != nil {
		status := http.StatusInternalServerError
		if req.Reason == "" {
			status = http.StatusBadRequest
		}
		s.log.Error("lockdown switch", "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	s.log.Warn("lockdown switched through the admin API", "on", req.On, "by", by)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.ready.Lockdown.Lockdown())
}

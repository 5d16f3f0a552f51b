package policy

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Lockdown is the switch's state: on, why, who asked, when. An instance is
// locked if its state file or the database says so.
type Lockdown struct {
	On     bool      `json:"on"`
	Reason string    `json:"reason"`
	By     string    `json:"by"`
	Since  time.Time `json:"since"`
}

// LockdownFile is the state file's name in state_dir.
const LockdownFile = "lockdown.json"

// LockdownChannel is the NOTIFY channel a switch is announced on.
const LockdownChannel = "phiproxy_lockdown"

// MaxReasonBytes bounds a reason.
const MaxReasonBytes = 500

// CheckReason validates a switch's reason: required, bounded, one line.
func CheckReason(reason string) error {
	r := strings.TrimSpace(reason)
	switch {
	case r == "":
		return errors.New("lockdown needs a reason (--reason TEXT): it is recorded in the audit trail")
	case len(r) > MaxReasonBytes:
		return fmt.Errorf("lockdown reason is longer than %d bytes", MaxReasonBytes)
	case strings.ContainsAny(r, "\r\n"):
		return errors.New("lockdown reason must be one line")
	}
	return nil
}

// Describe is a one-line description for logs and audit details.
func (l Lockdown) Describe(source string) string {
	state := "off"
	if l.On {
		state = "on"
	}
	return fmt.Sprintf("lockdown %s (%s): %s — by %s", state, source, l.Reason, l.By)
}

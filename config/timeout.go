package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// pgUnits are the time units PostgreSQL accepts in a setting such as
// idle_session_timeout ("10min", "30s").
var pgUnits = map[string]time.Duration{
	"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second,
	"min": time.Minute, "h": time.Hour, "d": 24 * time.Hour,
}

// maxTimeout is PostgreSQL's upper bound for its timeout settings
// (INT_MAX milliseconds, about 24.8 days).
const maxTimeout = math.MaxInt32 * time.Millisecond

// ParseTimeout reads a timeout setting: "0" (off), an integer with one of
// PostgreSQL's time units ("10min", "30s", "1h", "500ms", "1d", a space
// before the unit allowed), or a Go duration ("1m30s"). A bare number other
// than 0 is refused: PostgreSQL reads it as milliseconds, a reader of the
// file may not, so the unit must be written.
func ParseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == len(s) && i > 0 {
		return 0, fmt.Errorf("%q has no unit (write for example %sms or %ss)", s, s, s)
	}
	var d time.Duration
	if u, ok := pgUnits[strings.TrimSpace(s[i:])]; ok && i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n > int64(maxTimeout/u) {
			return 0, fmt.Errorf("%q is out of range (at most %s)", s, maxTimeout)
		}
		d = time.Duration(n) * u
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 10min, 30s or 1h", s)
		}
	}
	if d < 0 || d > maxTimeout {
		return 0, fmt.Errorf("%q is out of range (0 to %s)", s, maxTimeout)
	}
	if d != 0 && d < time.Millisecond {
		return 0, fmt.Errorf("%q is below PostgreSQL's resolution of 1ms", s)
	}
	return d, nil
}

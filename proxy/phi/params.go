package phi

import (
	"strings"
	"time"

	"github.com/phiproxy/phiproxy/codec"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/phiproxy/phiproxy/rewrite"
)

// settings are the server settings of a session that change what phiproxy
// may do with PHI. They start from proxy.SessionInfo.ServerParameters (the
// upstream's ParameterStatus values at the end of login, so the startup
// packet's options and role/database defaults are included) and follow
// every ParameterStatus the server sends. A settings value is immutable:
// the server goroutine swaps in a new one, the client goroutine reads it.
type settings struct {
	// tz is TimeZone, nil when Go cannot load the server's zone name.
	tz     *time.Location
	tzName string
	// encoding is client_encoding as the server reports it ("UTF8");
	// utf8 says it is UTF-8.
	encoding string
	utf8     bool
	// scsOff: standard_conforming_strings is off.
	scsOff bool
	// dateStyle is DateStyle ("ISO, MDY"); only its output part matters:
	// iso says it is ISO.
	dateStyle string
	iso       bool
}

func newSettings(server map[string]string) *settings {
	st := &settings{tz: time.UTC, tzName: "UTC", encoding: "UTF8", utf8: true, dateStyle: "ISO, MDY", iso: true}
	for name, value := range server {
		st.set(name, value)
	}
	return st
}

// set applies one ParameterStatus; it reports whether it was one phiproxy
// follows.
func (st *settings) set(name, value string) bool {
	switch name {
	case "TimeZone":
		st.tzName = value
		st.tz = nil
		if loc, err := time.LoadLocation(value); err == nil {
			st.tz = loc
		}
	case "client_encoding":
		st.encoding = value
		enc := strings.ToUpper(strings.ReplaceAll(value, "-", ""))
		st.utf8 = enc == "UTF8" || enc == "UNICODE"
	case "standard_conforming_strings":
		st.scsOff = value == "off"
	case "DateStyle":
		st.dateStyle = value
		st.iso = strings.HasPrefix(strings.ToUpper(strings.TrimSpace(value)), "ISO")
	default:
		return false
	}
	return true
}

// setParameter follows a ParameterStatus (server goroutine).
func (s *session) setParameter(name, value string) {
	next := *s.params.Load()
	if next.set(name, value) {
		s.params.Store(&next)
	}
}

// textRefusal refuses any text that mentions PHI while the session's
// settings make phiproxy's reading of SQL text differ from the server's.
// libpg_query lexes as PostgreSQL does with standard_conforming_strings
// on and UTF-8 text: with it off, '…\'…' ends a literal elsewhere; with
// another client_encoding (SJIS, BIG5, GBK can hide a backslash or quote
// byte inside a character) literals may end elsewhere too, and PHI values
// would be encrypted in, and returned to the client in, the wrong
// encoding. Either way the proxy could encrypt the wrong bytes or miss a
// PHI use, so it fails closed. The bytea literals phiproxy splices in
// (E'\\x…') mean the same under both settings of
// standard_conforming_strings.
func (s *session) textRefusal(snap *snapshot, sql string) error {
	st := s.params.Load()
	encOK := st.utf8
	if encOK && !st.scsOff {
		return nil
	}
	if !snap.planner.MentionsPHI(sql) {
		return nil
	}
	if !encOK {
		return pgerr.Newf(pgerr.FeatureNotSupported, "statements on PHI relations need client_encoding UTF8; this session uses %s", st.encoding).
			WithHint("SET client_encoding = 'UTF8' (or connect with client_encoding=UTF8) and convert in the application")
	}
	return pgerr.New(pgerr.FeatureNotSupported, "statements on PHI relations need standard_conforming_strings = on").
		WithHint("SET standard_conforming_strings = on (the default since PostgreSQL 9.1)")
}

// settingsRefusal refuses a planned statement whose PHI values the session's
// DateStyle or TimeZone would give a meaning phiproxy cannot reproduce.
// text reports whether output position i is sent in text format (nil: the
// formats are not known yet, as at Parse: output is checked at Bind).
//
// DateStyle: phiproxy's codec writes date, timestamp and timestamptz in ISO
// form; rather than imitate the SQL, Postgres and German styles, text
// output of those PHI values is refused unless DateStyle is ISO (binary
// output does not depend on it; input is ISO 8601 whatever DateStyle says).
// TimeZone: a zone name Go's time package cannot load leaves timestamptz
// PHI values (input without an offset, text output) without a meaning.
func (s *session) settingsRefusal(stmt *rewrite.Statement, text func(i int) bool) error {
	st := s.params.Load()
	iso := st.iso
	if iso && st.tz != nil {
		return nil
	}
	check := func(col *rewrite.PHIColumn, output bool) error {
		switch config.BaseType(col.Type) {
		case "date", "timestamp", "timestamptz":
		default:
			return nil
		}
		if output && !iso {
			return pgerr.Newf(pgerr.FeatureNotSupported, "PHI column %s (%s) cannot be returned as text with DateStyle %q", col.Ident, col.Type, st.dateStyle).
				WithHint("SET DateStyle = ISO (phiproxy writes PHI dates and timestamps in ISO form), or request binary results")
		}
		if config.BaseType(col.Type) == "timestamptz" && st.tz == nil {
			return pgerr.Newf(pgerr.FeatureNotSupported, "PHI column %s (timestamptz) cannot be used with TimeZone %q, which phiproxy cannot load", col.Ident, st.tzName).
				WithHint("SET TimeZone to an IANA zone name such as 'UTC' or 'America/New_York'")
		}
		return nil
	}
	for i := range stmt.Results {
		r := &stmt.Results[i]
		if err := check(&r.Column, text != nil && text(r.Position)); err != nil {
			return err
		}
	}
	for i := range stmt.Params {
		if err := check(&stmt.Params[i].Column, false); err != nil {
			return err
		}
	}
	for i := range stmt.Slots {
		if err := check(&stmt.Slots[i].Column, false); err != nil {
			return err
		}
	}
	if c := stmt.Copy; c != nil && c.Format != "binary" {
		for _, f := range c.Fields {
			if f.Column != nil {
				if err := check(f.Column, !c.In); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// textFormats reports text for every position (simple protocol).
func textFormats(int) bool { return true }

// resultText reports whether position i is sent in text format for the
// Bind result format codes formats.
func resultText(formats []int16) func(int) bool {
	return func(i int) bool { return formatAt(formats, i) == codec.TextFormat }
}

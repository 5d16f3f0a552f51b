package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the validated content of one config file. Treat it as immutable.
type Config struct {
	// Path is the absolute path of the file the config was loaded from
	// ("" when loaded from bytes without a path).
	Path string

	// Instance names this phiproxy instance in audit events and logs
	// (DESIGN §8 "instance"); by default the host name.
	Instance   string
	Listen     string
	ClientTLS  ClientTLS
	Upstream   Upstream
	CatalogDSN string
	Auth       Auth
	Admin      *Admin
	StateDir   string
	Keys       Keys
	Audit      Audit
	Limits     Limits
	// CatalogOverlay is install, use or off (catalog_overlay.go).
	CatalogOverlay string
	// Catalog is how the catalog snapshot is kept current.
	Catalog CatalogRefresh

	// PHI maps "schema.table" → column name → column. Use Column, Relations
	// and Columns to read it.
	PHI map[string]map[string]Column
}

// CatalogRefresh is how the proxy keeps its catalog snapshot current
// (catalog: in the config file).
type CatalogRefresh struct {
	// RefreshInterval is the period of the fallback refresh, also done
	// where the event trigger announces DDL; 0 turns it off.
	RefreshInterval time.Duration
}

// DefaultCatalogRefreshInterval is catalog.refresh_interval's default.
const DefaultCatalogRefreshInterval = 30 * time.Second

// ClientTLS is the client leg's TLS setting.
type ClientTLS struct {
	Mode string // disable | allow | require
	Cert string // absolute path
	Key  string // absolute path
}

// Client TLS modes.
const (
	TLSDisable = "disable"
	TLSAllow   = "allow"
	TLSRequire = "require"
)

// Upstream is the PostgreSQL server phiproxy connects to, with libpq's
// sslmode semantics.
type Upstream struct {
	Address     string
	SSLMode     string // disable | prefer | require | verify-ca | verify-full
	SSLRootCert string // absolute path, for verify-ca / verify-full
	SSLCert     string // optional client certificate
	SSLKey      string
	// ServerName overrides the host name checked by verify-full; by default
	// the host part of Address.
	ServerName string
}

// Auth says how client authentication works.
type Auth struct {
	Mode  string // terminate | relay
	Query string // verifier lookup; $1 is the role name
}

// Auth modes.
const (
	AuthTerminate = "terminate"
	AuthRelay     = "relay"
)

// DefaultAuthQuery looks up a role's verifier and whether it may log in, so
// NOLOGIN gets PostgreSQL's own 28000 after a correct password; it needs a superuser catalog
// role. docs/configuration.md shows a SECURITY DEFINER function instead.
const DefaultAuthQuery = "SELECT rolname, rolpassword, rolvaliduntil, rolcanlogin FROM pg_authid WHERE rolname = $1"

// Admin is the admin HTTP listener (package proxy/admin).
type Admin struct {
	// Listen is host:port, DefaultAdminListen (loopback) when not set.
	Listen string
	// TokenFile holds the bearer token (absolute path; required).
	TokenFile string
	// Cert and Key, both or neither, serve the admin API over TLS
	// (absolute paths).
	Cert string
	Key  string
	// CatalogMaxAge: /readyz fails when the catalog was last read longer
	// ago than this; 0 (default) does not check it.
	CatalogMaxAge time.Duration
}

// DefaultAdminListen is admin.listen when the admin section leaves it out:
// loopback only.
const DefaultAdminListen = "127.0.0.1:9187"

// Keys locates keysets and their key-encryption key.
type Keys struct {
	Dir string // absolute path
	// KEK is "file:ABS" after resolution, or an "hcvault://" URI.
	KEK string
}

// Limits bound resource use per session.
type Limits struct {
	// MaxMessageBytes bounds one protocol message on either leg.
	MaxMessageBytes int
	// DrainTimeout is how long SIGTERM waits for sessions before 57P01.
	DrainTimeout time.Duration
	// ConnectTimeout bounds dialling and logging in upstream.
	ConnectTimeout time.Duration
	// MaxConnections caps the client connections served at once; one more
	// gets FATAL 53300 "sorry, too many clients already". 0: no cap.
	MaxConnections int
	// MaxPHIStatementBytes is the longest statement text naming a PHI
	// relation that is planned (longer: 54000); 0: the default, 4 MiB.
	MaxPHIStatementBytes int
	// IdleSessionTimeout ends a session idle outside a transaction with
	// FATAL 57P05, IdleInTransactionTimeout one idle inside a transaction
	// block with FATAL 25P03, as PostgreSQL's settings of the same names
	// (automatic logoff). 0: off (default).
	IdleSessionTimeout       time.Duration
	IdleInTransactionTimeout time.Duration
}

func defaultInstance() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "phiproxy"
}

// Dir is the directory relative paths are resolved against.
func (c *Config) Dir() string {
	if c.Path == "" {
		wd, _ := os.Getwd()
		return wd
	}
	return filepath.Dir(c.Path)
}

// raw mirrors the YAML document; strict decoding rejects unknown keys.
type raw struct {
	Instance  string `yaml:"instance"`
	Listen    string `yaml:"listen"`
	ClientTLS *struct {
		Mode string `yaml:"mode"`
		Cert string `yaml:"cert"`
		Key  string `yaml:"key"`
	} `yaml:"client_tls"`
	Upstream *struct {
		Address     string `yaml:"address"`
		SSLMode     string `yaml:"sslmode"`
		SSLRootCert string `yaml:"sslrootcert"`
		SSLCert     string `yaml:"sslcert"`
		SSLKey      string `yaml:"sslkey"`
		ServerName  string `yaml:"server_name"`
	} `yaml:"upstream"`
	CatalogDSN string `yaml:"catalog_dsn"`
	Auth       *struct {
		Mode  string `yaml:"mode"`
		Query string `yaml:"query"`
	} `yaml:"auth"`
	Admin *struct {
		Listen        string `yaml:"listen"`
		TokenFile     string `yaml:"token_file"`
		Cert          string `yaml:"cert"`
		Key           string `yaml:"key"`
		CatalogMaxAge string `yaml:"catalog_max_age"`
	} `yaml:"admin"`
	StateDir string `yaml:"state_dir"`
	Keys     *struct {
		Dir string `yaml:"dir"`
		KEK string `yaml:"kek"`
	} `yaml:"keys"`
	Audit  *rawAudit `yaml:"audit"`
	Limits *struct {
		MaxMessageBytes int    `yaml:"max_message_bytes"`
		DrainTimeout    string `yaml:"drain_timeout"`
		ConnectTimeout  string `yaml:"connect_timeout"`
		MaxConnections  int    `yaml:"max_connections"`
		MaxPHIStatement int    `yaml:"max_phi_statement_bytes"`
		IdleSession     string `yaml:"idle_session_timeout"`
		IdleInTx        string `yaml:"idle_in_transaction_timeout"`
	} `yaml:"limits"`
	PHI            map[string]map[string]*rawColumn `yaml:"phi"`
	CatalogOverlay string                           `yaml:"catalog_overlay"`
	Catalog        *struct {
		RefreshInterval string `yaml:"refresh_interval"`
	} `yaml:"catalog"`
}

type rawColumn struct {
	Type       string         `yaml:"type"`
	Mode       string         `yaml:"mode"`
	Key        string         `yaml:"key"`
	Default    string         `yaml:"default"`
	Read       []yaml.Node    `yaml:"read"`
	Write      []yaml.Node    `yaml:"write"`
	BreakGlass *rawBreakGlass `yaml:"break_glass"`
	Enforce    string         `yaml:"enforce"`
}

// Load reads and validates the config file at path.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, abs)
}

// Parse validates a config document; path (absolute, may be "") anchors
// relative paths and names the file in errors.
func Parse(data []byte, path string) (*Config, error) {
	name := path
	if name == "" {
		name = "config"
	}
	var r raw
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var typeErrs []string
	if err := dec.Decode(&r); err != nil {
		// Unknown keys and wrong types do not stop the decoding: report
		// them in YAML's words with every other problem of the file.
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		typeErrs = te.Errors
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)

	v := &validator{file: name, root: &root}
	for _, e := range typeErrs {
		v.errs = append(v.errs, yamlError(name, e))
	}
	c := &Config{Path: path}
	dir := c.Dir()
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}

	c.Instance = r.Instance
	if c.Instance == "" {
		c.Instance = defaultInstance()
	}

	c.Listen = r.Listen
	if c.Listen == "" {
		v.errf([]string{"listen"}, "listen is required (host:port)")
	} else if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		v.errf([]string{"listen"}, "listen %q is not host:port", c.Listen)
	}

	c.ClientTLS.Mode = TLSDisable
	if r.ClientTLS != nil {
		if r.ClientTLS.Mode != "" {
			c.ClientTLS.Mode = r.ClientTLS.Mode
		}
		c.ClientTLS.Cert = resolve(r.ClientTLS.Cert)
		c.ClientTLS.Key = resolve(r.ClientTLS.Key)
	}
	switch c.ClientTLS.Mode {
	case TLSDisable:
	case TLSAllow, TLSRequire:
		if c.ClientTLS.Cert == "" || c.ClientTLS.Key == "" {
			v.errf([]string{"client_tls"}, "client_tls mode %s needs cert and key", c.ClientTLS.Mode)
		}
	default:
		v.errf([]string{"client_tls", "mode"}, "client_tls.mode %q is not one of disable, allow, require", c.ClientTLS.Mode)
	}

	if r.Upstream == nil || r.Upstream.Address == "" {
		v.errf([]string{"upstream"}, "upstream.address is required (host:port)")
	} else {
		c.Upstream = Upstream{
			Address:     r.Upstream.Address,
			SSLMode:     r.Upstream.SSLMode,
			SSLRootCert: resolve(r.Upstream.SSLRootCert),
			SSLCert:     resolve(r.Upstream.SSLCert),
			SSLKey:      resolve(r.Upstream.SSLKey),
			ServerName:  r.Upstream.ServerName,
		}
		if _, _, err := net.SplitHostPort(c.Upstream.Address); err != nil {
			v.errf([]string{"upstream", "address"}, "upstream.address %q is not host:port", c.Upstream.Address)
		}
		if c.Upstream.SSLMode == "" {
			c.Upstream.SSLMode = "prefer" // libpq's default
		}
		switch c.Upstream.SSLMode {
		case "disable", "allow", "prefer", "require":
		case "verify-ca", "verify-full":
			if c.Upstream.SSLRootCert == "" {
				v.errf([]string{"upstream", "sslmode"}, "upstream.sslmode %s needs upstream.sslrootcert", c.Upstream.SSLMode)
			}
		default:
			v.errf([]string{"upstream", "sslmode"}, "upstream.sslmode %q is not one of disable, allow, prefer, require, verify-ca, verify-full", c.Upstream.SSLMode)
		}
		if (c.Upstream.SSLCert == "") != (c.Upstream.SSLKey == "") {
			v.errf([]string{"upstream"}, "upstream.sslcert and upstream.sslkey go together")
		}
	}

	c.CatalogDSN = r.CatalogDSN
	if c.CatalogDSN == "" {
		v.errf([]string{"catalog_dsn"}, "catalog_dsn is required")
	} else if strings.Contains(c.CatalogDSN, "password=") || dsnHasPassword(c.CatalogDSN) {
		v.errf([]string{"catalog_dsn"}, "catalog_dsn must not hold a password: use PGPASSFILE")
	}

	c.Auth = Auth{Mode: AuthTerminate, Query: DefaultAuthQuery}
	if r.Auth != nil {
		if r.Auth.Mode != "" {
			c.Auth.Mode = r.Auth.Mode
		}
		if r.Auth.Query != "" {
			c.Auth.Query = r.Auth.Query
		}
	}
	if c.Auth.Mode != AuthTerminate && c.Auth.Mode != AuthRelay {
		v.errf([]string{"auth", "mode"}, "auth.mode %q is not one of terminate, relay", c.Auth.Mode)
	}
	if !strings.Contains(c.Auth.Query, "$1") {
		v.errf([]string{"auth", "query"}, "auth.query must take the role name as $1")
	}

	if r.Admin != nil {
		c.Admin = &Admin{Listen: r.Admin.Listen, Cert: resolve(r.Admin.Cert), Key: resolve(r.Admin.Key)}
		if c.Admin.Listen == "" {
			c.Admin.Listen = DefaultAdminListen
		}
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			v.errf([]string{"admin", "listen"}, "admin.listen %q is not host:port", c.Admin.Listen)
		}
		if r.Admin.TokenFile == "" {
			v.errf([]string{"admin"}, "admin needs token_file: every endpoint but /healthz requires its bearer token")
		} else {
			c.Admin.TokenFile = resolve(r.Admin.TokenFile)
		}
		if (c.Admin.Cert == "") != (c.Admin.Key == "") {
			v.errf([]string{"admin"}, "admin.cert and admin.key go together")
		}
		if a := r.Admin.CatalogMaxAge; a != "" {
			if d, err := time.ParseDuration(a); err != nil || d < 0 {
				v.errf([]string{"admin", "catalog_max_age"}, "admin.catalog_max_age %q is not a duration such as 5m", a)
			} else {
				c.Admin.CatalogMaxAge = d
			}
		}
	}

	c.CatalogOverlay = OverlayInstall
	if r.CatalogOverlay != "" {
		c.CatalogOverlay = r.CatalogOverlay
	}
	if c.CatalogOverlay != OverlayInstall && c.CatalogOverlay != OverlayUse && c.CatalogOverlay != OverlayOff {
		v.errf([]string{"catalog_overlay"}, "catalog_overlay %q is not one of install, use, off", c.CatalogOverlay)
	}

	c.Catalog.RefreshInterval = DefaultCatalogRefreshInterval
	if r.Catalog != nil && r.Catalog.RefreshInterval != "" {
		d, err := time.ParseDuration(r.Catalog.RefreshInterval)
		if err != nil || d < 0 {
			v.errf([]string{"catalog", "refresh_interval"}, "catalog.refresh_interval %q is not a duration such as 30s (0 turns it off)", r.Catalog.RefreshInterval)
		}
		c.Catalog.RefreshInterval = max(d, 0)
	}

	c.StateDir = resolve("state")
	if r.StateDir != "" {
		c.StateDir = resolve(r.StateDir)
	}

	c.Keys = Keys{Dir: resolve("keys"), KEK: "file:" + resolve("kek.json")}
	if r.Keys != nil {
		if r.Keys.Dir != "" {
			c.Keys.Dir = resolve(r.Keys.Dir)
		}
		if r.Keys.KEK != "" {
			kek, err := ResolveKEK(r.Keys.KEK, dir, "keys.kek")
			if err != nil {
				v.errf([]string{"keys", "kek"}, "%v", err)
			}
			c.Keys.KEK = kek
		}
	}

	c.Audit = v.audit(r.Audit, c.Instance, resolve)

	c.Limits = Limits{MaxMessageBytes: 64 << 20, DrainTimeout: 30 * time.Second, ConnectTimeout: 10 * time.Second}
	if r.Limits != nil {
		if r.Limits.MaxMessageBytes != 0 {
			if r.Limits.MaxMessageBytes < 1<<16 {
				v.errf([]string{"limits", "max_message_bytes"}, "limits.max_message_bytes must be at least 65536")
			}
			c.Limits.MaxMessageBytes = r.Limits.MaxMessageBytes
		}
		if r.Limits.MaxConnections < 0 {
			v.errf([]string{"limits", "max_connections"}, "limits.max_connections must be 0 (no cap) or a positive number of connections")
		}
		c.Limits.MaxConnections = r.Limits.MaxConnections
		if r.Limits.MaxPHIStatement < 0 || r.Limits.MaxPHIStatement > 0 && r.Limits.MaxPHIStatement < 1<<10 {
			v.errf([]string{"limits", "max_phi_statement_bytes"}, "limits.max_phi_statement_bytes must be 0 (the default, 4 MiB) or at least 1024")
		}
		c.Limits.MaxPHIStatementBytes = r.Limits.MaxPHIStatement
		// drain and connect take a Go duration; the idle timeouts also
		// take PostgreSQL's spelling (ParseTimeout), as the server's own
		// settings of the same names do.
		positive := func(s string) (time.Duration, error) {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				return 0, fmt.Errorf("%q is not a positive duration such as 30s", s)
			}
			return d, nil
		}
		for _, d := range []struct {
			key   string
			val   string
			parse func(string) (time.Duration, error)
			dst   *time.Duration
		}{
			{"drain_timeout", r.Limits.DrainTimeout, positive, &c.Limits.DrainTimeout},
			{"connect_timeout", r.Limits.ConnectTimeout, positive, &c.Limits.ConnectTimeout},
			{"idle_session_timeout", r.Limits.IdleSession, ParseTimeout, &c.Limits.IdleSessionTimeout},
			{"idle_in_transaction_timeout", r.Limits.IdleInTx, ParseTimeout, &c.Limits.IdleInTransactionTimeout},
		} {
			if d.val == "" {
				continue
			}
			dur, err := d.parse(d.val)
			if err != nil {
				v.errf([]string{"limits", d.key}, "limits.%s: %v", d.key, err)
				continue
			}
			*d.dst = dur
		}
	}

	c.PHI = map[string]map[string]Column{}
	for relName, cols := range r.PHI {
		schema, table, ok := splitRelation(relName)
		if !ok {
			v.errf([]string{"phi", relName}, "phi relation %q must be schema.table", relName)
			continue
		}
		rel := schema + "." + table
		if _, dup := c.PHI[rel]; dup {
			v.errf([]string{"phi", relName}, "phi relation %s is declared twice", rel)
			continue
		}
		m := map[string]Column{}
		for colName, rc := range cols {
			path := []string{"phi", relName, colName}
			if rc == nil {
				v.errf(path, "phi column %s.%s needs at least type and mode", rel, colName)
				continue
			}
			col := Column{Schema: schema, Table: table, Name: colName, Key: rc.Key, Default: rc.Default, Mode: rc.Mode, Line: v.line(path)}
			typ, err := ParseLogicalType(rc.Type)
			if err != nil {
				v.errf(append(path, "type"), "phi column %s: %v", col.Ident(), err)
			}
			col.Type = typ.String()
			if col.Mode != ModeRandomized && col.Mode != ModeDeterministic {
				v.errf(append(path, "mode"), "phi column %s: mode %q is not one of randomized, deterministic", col.Ident(), rc.Mode)
			}
			if col.Key == "" {
				col.Key = col.Ident()
			}
			if col.Default == "" {
				col.Default = AccessDeny
			}
			switch col.Enforce = rc.Enforce; col.Enforce {
			case "":
				col.Enforce = EnforceOn
			case EnforceOn, EnforceObserve:
			default:
				v.errf(append(path, "enforce"), "phi column %s: enforce %q is not one of on, observe", col.Ident(), rc.Enforce)
			}
			col.Policy = v.columnPolicy(&col, rc, path)
			m[colName] = col
		}
		c.PHI[rel] = m
	}
	// Columns sharing a key must agree on mode and type.
	for key, cols := range c.KeyNames() {
		for _, col := range cols[1:] {
			if col.Mode != cols[0].Mode || col.Type != cols[0].Type {
				v.errAt(col.Line, "phi column %s shares key %s with %s but differs in mode or type (%s %s vs %s %s)",
					col.Ident(), key, cols[0].Ident(), col.Mode, col.Type, cols[0].Mode, cols[0].Type)
			}
			if col.Enforce != cols[0].Enforce {
				v.errAt(col.Line, "phi column %s shares key %s with %s but differs in enforce (%s vs %s): plaintext cannot be compared with ciphertext",
					col.Ident(), key, cols[0].Ident(), col.Enforce, cols[0].Enforce)
			}
		}
	}
	if err := errors.Join(v.errs...); err != nil {
		return nil, err
	}
	return c, nil
}

func dsnHasPassword(dsn string) bool {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return false
	}
	rest := dsn[strings.Index(dsn, "://")+3:]
	at := strings.IndexByte(rest, '@')
	if at < 0 {
		return false
	}
	return strings.Contains(rest[:at], ":")
}

func splitRelation(s string) (schema, table string, ok bool) {
	parts := strings.Split(s, ".")
	switch len(parts) {
	case 1:
		return "public", parts[0], parts[0] != ""
	case 2:
		return parts[0], parts[1], parts[0] != "" && parts[1] != ""
	}
	return "", "", false
}

// ResolveKEK resolves a KEK URI as keys.kek is resolved: file:REL is
// relative to dir (the config file's directory), file:///ABS absolute,
// hcvault://… as written. setting names where the URI came from in
// errors ("keys.kek", "--to").
func ResolveKEK(kek, dir, setting string) (string, error) {
	switch {
	case strings.HasPrefix(kek, "file://"):
		p := strings.TrimPrefix(kek, "file://")
		if !filepath.IsAbs(p) {
			return "", fmt.Errorf("%s %q: file:// needs an absolute path (file:///ABS); use file:REL for a relative one", setting, kek)
		}
		return "file:" + p, nil
	case strings.HasPrefix(kek, "file:"):
		p := strings.TrimPrefix(kek, "file:")
		if p == "" {
			return "", fmt.Errorf("%s %q names no file", setting, kek)
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return "file:" + p, nil
	case strings.HasPrefix(kek, "hcvault://"):
		return kek, nil
	}
	return "", fmt.Errorf("%s %q is not file:PATH, file:///ABS or hcvault://HOST/transit/keys/NAME", setting, kek)
}

// validator collects problems with their line numbers.
type validator struct {
	file string
	root *yaml.Node
	errs []error
}

func (v *validator) errf(path []string, format string, args ...any) {
	v.errAt(v.line(path), format, args...)
}

func (v *validator) errAt(line int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if line > 0 {
		v.errs = append(v.errs, fmt.Errorf("%s:%d: %s", v.file, line, msg))
		return
	}
	v.errs = append(v.errs, fmt.Errorf("%s: %s", v.file, msg))
}

// line finds the line of the deepest existing key along path.
func (v *validator) line(path []string) int {
	n := v.root
	if n == nil || n.Kind != yaml.DocumentNode || len(n.Content) == 0 {
		return 0
	}
	n = n.Content[0]
	line := 0
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			break
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				line = n.Content[i].Line
				n = n.Content[i+1]
				found = true
				break
			}
		}
		if !found {
			break
		}
	}
	return line
}

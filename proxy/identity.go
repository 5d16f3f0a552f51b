package proxy

import (
	"context"
	"slices"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
)

// RoleLookup returns the roles role is a member of, itself included (see
// SessionInfo.Roles).
type RoleLookup func(ctx context.Context, role string) ([]string, error)

// WithRoleLookup replaces how a session's role memberships are resolved
// (by default config.RoleMemberships over the catalog connection).
func WithRoleLookup(f RoleLookup) Option { return func(o *options) { o.roles = f } }

// roleLookup is the runtime's role lookup: the Server's option, else
// config.RoleMemberships over the catalog connection pool the verifier
// lookup shares.
func (rt *runtimeConfig) roleLookup(o *options) RoleLookup {
	if o.roles != nil {
		return o.roles
	}
	cat := rt.catalog
	return func(ctx context.Context, role string) ([]string, error) {
		return config.RoleMemberships(ctx, cat, role)
	}
}

// resolveRoles fills in the session's role memberships after login, for
// its Interceptor. A failure ends the login: with no memberships a policy
// could not tell which of its rules apply.
func (s *session) resolveRoles(ctx context.Context, rt *runtimeConfig) error {
	ctx, cancel := context.WithTimeout(ctx, rt.cfg.Limits.ConnectTimeout)
	defer cancel()
	roles, err := rt.roles(ctx, s.info.User)
	if err != nil {
		s.log.Warn("could not resolve the role memberships", "err", err, "sqlstate", sqlstateOf(err))
		return pgerr.Fatal(pgerr.ConnectionFailure, `could not look up the role memberships of user "`+s.info.User+`"`).WithCause(err)
	}
	s.info.Roles = slices.Clip(roles)
	return nil
}

package proxy

import (
	"errors"

	"github.com/phiproxy/phiproxy/config"
)

// terminateLogin builds the login for auth.mode terminate.
func (s *Server) terminateLogin(_ *config.Config) (loginFunc, error) {
	return nil, errors.New("auth.mode terminate is not available in this build yet; use auth.mode relay")
}

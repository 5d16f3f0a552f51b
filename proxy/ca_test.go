package proxy

import "github.com/phiproxy/phiproxy/pgcluster"

// newTestCA makes another CA (not the cluster's) and returns its PEM file.
func newTestCA(dir string) (string, error) {
	ca, err := pgcluster.NewCA(dir)
	if err != nil {
		return "", err
	}
	return ca.CertFile, nil
}

// Package config turns phiproxy's YAML file into a validated, immutable
// Config, and (in catalog.go) loads a versioned snapshot of the live schema
// the PHI columns live in.
//
// Load decodes strictly: an unknown key is an error that names its line.
// After decoding, every rule is validated and all problems are returned at
// once with errors.Join, each naming the line it comes from. Relative paths
// are resolved against the config file's directory. The result is never
// mutated; a reload builds a new Config and the caller swaps it atomically.
package config

// Package policy holds who may see what (DESIGN §7): for now the lockdown
// switch — its state, persisted in state_dir and in the database so that
// one command reaches every instance sharing the database. Role, time and
// network rules and masking come with the policy issue.
package policy

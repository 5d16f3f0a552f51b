// Command phiproxy is a PHI-encrypting PostgreSQL wire proxy. main only
// dispatches subcommands; each lives in its own file and returns an error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand. run gets the arguments after the subcommand
// name and writes its normal output to stdout.
type command struct {
	summary string
	run     func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv carries the process's standard streams so subcommands stay
// testable.
type cmdEnv struct {
	stdout io.Writer
	stderr io.Writer
}

// usageError makes the process exit 2 (usage or config error).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// findingsError makes the process exit 1 (a check found problems).
type findingsError struct{ err error }

func (e findingsError) Error() string { return e.err.Error() }
func (e findingsError) Unwrap() error { return e.err }

// runtimeError makes the process exit 1: the command was used right but
// failed at run time (for example PostgreSQL could not be reached).
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }
func (e runtimeError) Unwrap() error { return e.err }

func commands() map[string]command {
	return map[string]command{
		"serve":     {"run the proxy (SIGHUP reloads, SIGTERM drains)", runServe},
		"audit":     {"the audit trail: verify|search|export|tail", runAudit},
		"check":     {"compare the config and keys with the live schema; exit 1 on findings", runCheck},
		"demo":      {"throwaway PostgreSQL + phiproxy in front of it; prints connection strings", runDemo},
		"encrypt":   {"encrypt existing plaintext of PHI columns online (resumable)", runEncrypt},
		"decrypt":   {"turn an encrypted column back into plaintext (--i-understand-this-writes-plaintext)", runDecrypt},
		"reencrypt": {"after keys rotate: rewrite values to the primary key, online", runReencrypt},
		"keys":      {"manage keysets: init|create|rotate|list|retire|rewrap|export-public", runKeys},
		"lockdown":  {"stop all plaintext PHI on every instance: on|off|status", runLockdown},
		"observe":   {"report what enforcement would do on columns in enforce: observe; exit 1 if refusals", runObserve},
		"overlay":   {"catalog overlay for introspection: install|status", runOverlay},
		"version":   {"print the version", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := &cmdEnv{stdout: os.Stdout, stderr: os.Stderr}
	err := run(ctx, env, os.Args[1:])
	stop()
	os.Exit(exitCode(env, err))
}

func exitCode(env *cmdEnv, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(env.stderr, "phiproxy:", err)
	var f findingsError
	var r runtimeError
	if errors.As(err, &f) || errors.As(err, &r) {
		return 1
	}
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 2
}

func run(ctx context.Context, env *cmdEnv, args []string) error {
	c, err := pick(env, args, commands(), printUsage, "", "subcommand")
	if err != nil || c == nil {
		return err
	}
	return c.run(ctx, env, args[1:])
}

func printUsage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: phiproxy <command> [flags]\n\ncommands:")
	printSummaries(w, 9, cmds, func(c command) string { return c.summary })
}

// printSummaries lists the names of m in order, each with its summary in
// a column width wide.
func printSummaries[T any](w io.Writer, width int, m map[string]T, summary func(T) string) {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s %s\n", width, n, summary(m[n]))
	}
}

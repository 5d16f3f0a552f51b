package pgerr

import (
	"errors"
	"fmt"
)

// Code is a five-character PostgreSQL SQLSTATE.
type Code struct{ s string }

// String returns the five-character SQLSTATE.
func (c Code) String() string { return c.s }

// Class returns the two-character class of the SQLSTATE.
func (c Code) Class() string {
	if len(c.s) < 2 {
		return ""
	}
	return c.s[:2]
}

// The SQLSTATEs phiproxy emits. Only standard classes are used so that clients
// behave as they would against PostgreSQL.
var (
	ConnectionException          = Code{"08000"}
	ConnectionDoesNotExist       = Code{"08003"}
	ConnectionFailure            = Code{"08006"}
	SQLClientUnableToEstablish   = Code{"08001"}
	SQLServerRejectedConnection  = Code{"08004"}
	ProtocolViolation            = Code{"08P01"}
	TransactionResolutionUnknown = Code{"08007"}
	FeatureNotSupported          = Code{"0A000"}
	InvalidAuthorizationSpec     = Code{"28000"}
	InvalidPassword              = Code{"28P01"}
	InsufficientPrivilege        = Code{"42501"}
	UndefinedTable               = Code{"42P01"}
	UndefinedColumn              = Code{"42703"}
	UndefinedFunction            = Code{"42883"}
	UndefinedObject              = Code{"42704"}
	SyntaxError                  = Code{"42601"}
	AmbiguousColumn              = Code{"42702"}
	DatatypeMismatch             = Code{"42804"}
	InvalidParameterValue        = Code{"22023"}
	InvalidTextRepresentation    = Code{"22P02"}
	InvalidBinaryRepresentation  = Code{"22P03"}
	StringDataRightTruncation    = Code{"22001"}
	DataCorrupted                = Code{"XX001"}
	Internal                     = Code{"XX000"}
	AdminShutdown                = Code{"57P01"}
	QueryCanceled                = Code{"57014"}
	CannotConnectNow             = Code{"57P03"}
	TooManyConnections           = Code{"53300"}
	ProgramLimitExceeded         = Code{"54000"}
	InvalidSQLStatementName      = Code{"26000"}
	InvalidCursorName            = Code{"34000"}
	DuplicatePreparedStatement   = Code{"42P05"}
	InFailedSQLTransaction       = Code{"25P02"}
	ObjectNotInPrerequisiteState = Code{"55000"}
	WrongObjectType              = Code{"42809"}
	InvalidSchemaName            = Code{"3F000"}
	InvalidCatalogName           = Code{"3D000"}
	ConfigFileError              = Code{"F0000"}
	IntegrityConstraintViolation = Code{"23000"}
	CheckViolation               = Code{"23514"}
	InvalidTransactionState      = Code{"25000"}
	ActiveSQLTransaction         = Code{"25001"}
	InvalidRecursion             = Code{"42P19"}
	IndeterminateDatatype        = Code{"42P18"}
	InvalidColumnReference       = Code{"42P10"}
	SystemError                  = Code{"58000"}
	IOError                      = Code{"58030"}
	DataException                = Code{"22000"}
	NullValueNotAllowed          = Code{"22004"}
	InvalidDatetimeFormat        = Code{"22007"}
	NumericValueOutOfRange       = Code{"22003"}
	BadCopyFileFormat            = Code{"22P04"}
	DatetimeFieldOverflow        = Code{"22008"}
	CharacterNotInRepertoire     = Code{"22021"}
	UntranslatableCharacter      = Code{"22P05"}
	StatementTooComplex          = Code{"54001"}
)

// The automatic-logoff SQLSTATEs, PostgreSQL's for idle_session_timeout and
// idle_in_transaction_session_timeout.
var (
	IdleSessionTimeout       = Code{"57P05"}
	IdleInTransactionTimeout = Code{"25P03"}
)

// Severity of an error as PostgreSQL reports it.
type Severity string

// Severities used by phiproxy.
const (
	SeverityError Severity = "ERROR"
	SeverityFatal Severity = "FATAL"
)

// Error is a refusal or failure that becomes a PostgreSQL ErrorResponse.
// Message, Detail and Hint must never contain a value, a parameter or row
// content: only relation, column and type names.
type Error struct {
	Severity Severity
	Code     Code
	Message  string
	Detail   string
	Hint     string
	// Position is the 1-based character offset in the statement text, 0 if
	// unknown, as in PostgreSQL's ErrorResponse 'P' field.
	Position int
	// Cause is an underlying error kept for wrapping; it is never sent to
	// the client.
	Cause error
}

// New returns an ERROR-severity error with the given code and message.
func New(code Code, msg string) *Error {
	return &Error{Severity: SeverityError, Code: code, Message: msg}
}

// Newf is New with fmt.Sprintf formatting.
func Newf(code Code, format string, args ...any) *Error {
	return New(code, fmt.Sprintf(format, args...))
}

// Fatal returns a FATAL-severity error: the connection ends after it is sent.
func Fatal(code Code, msg string) *Error {
	return &Error{Severity: SeverityFatal, Code: code, Message: msg}
}

// WithHint returns a copy of e with its hint set.
func (e *Error) WithHint(hint string) *Error {
	return e.with(func(c *Error) { c.Hint = hint })
}

// WithDetail returns a copy of e with its detail set.
func (e *Error) WithDetail(detail string) *Error {
	return e.with(func(c *Error) { c.Detail = detail })
}

// WithCause returns a copy of e that wraps cause (never shown to clients).
func (e *Error) WithCause(cause error) *Error {
	return e.with(func(c *Error) { c.Cause = cause })
}

// WithPosition returns a copy of e with its 1-based statement position set.
func (e *Error) WithPosition(pos int) *Error {
	return e.with(func(c *Error) { c.Position = pos })
}

// with returns a copy of e changed by set.
func (e *Error) with(set func(c *Error)) *Error {
	c := *e
	set(&c)
	return &c
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code.s)
}

func (e *Error) Unwrap() error { return e.Cause }

// As returns the first *Error in err's chain, or nil.
func As(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}

// CodeOf returns the SQLSTATE of err, or Internal if err carries none.
func CodeOf(err error) Code {
	if pe := As(err); pe != nil {
		return pe.Code
	}
	return Internal
}

// MakeCode returns the Code for a SQLSTATE written in phiproxy's own
// source (a constant not in the list above). It panics on a malformed
// code, which is a programming error. A SQLSTATE that arrives from the
// upstream server or a client goes through ParseCode instead.
func MakeCode(s string) Code {
	c, ok := ParseCode(s)
	if !ok {
		panic("BUG: SQLSTATE must be five characters of 0-9 and A-Z")
	}
	return c
}

// ParseCode returns the Code for a SQLSTATE that came from outside (an
// upstream ErrorResponse, a client): five characters of 0-9 and A-Z. It
// reports false for anything else; the caller then falls back to Internal
// (XX000) for an error whose code is missing or unusable, or to
// ProtocolViolation (08P01) when the message that carried it was malformed.
func ParseCode(s string) (Code, bool) {
	if len(s) != 5 {
		return Code{}, false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'A' || c > 'Z') {
			return Code{}, false
		}
	}
	return Code{s}, true
}

package mesh

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong, why, and how to fix it.
type Problem struct {
	// Err is one of the package's sentinel errors.
	Err error `json:"-"`
	// Code is Err's text ("endpoint unreachable", "pod CIDRs overlap"...),
	// stable for scripts reading -o json.
	Code string `json:"code,omitempty"`
	// Reason names the objects involved and what is wrong with them.
	Reason string `json:"reason"`
	// Fix is the next step: a command to run or an action to take.
	Fix string `json:"fix,omitempty"`
}

func (p Problem) String() string {
	if p.Fix == "" {
		return p.Reason
	}
	return p.Reason + "\n    fix: " + p.Fix
}

func problem(err error, fix, format string, args ...any) Problem {
	p := Problem{Err: err, Reason: fmt.Sprintf(format, args...), Fix: fix}
	if err != nil {
		p.Code = err.Error()
	}
	return p
}

// CheckError is returned when checks found problems; nothing was changed
// (or, for a wait, nothing more happened).
type CheckError struct {
	Op string
	// Outcome is what became of Op: "refused" when empty; a wait that ran
	// out says "gave up".
	Outcome  string
	Problems []Problem
}

func (e *CheckError) Error() string {
	var b strings.Builder
	outcome := e.Outcome
	if outcome == "" {
		outcome = "refused"
	}
	fmt.Fprintf(&b, "%s %s: %d problem(s):", e.Op, outcome, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Unwrap lets errors.Is match any problem's sentinel.
func (e *CheckError) Unwrap() []error {
	errs := make([]error, 0, len(e.Problems))
	for _, p := range e.Problems {
		if p.Err != nil {
			errs = append(errs, p.Err)
		}
	}
	return errs
}

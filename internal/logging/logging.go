// Package logging builds the daemons' loggers from their flags and holds the
// one nil-logger convention of the tree: a library given no logger discards
// its logs (OrDiscard) rather than writing to the process-wide default, which
// only a command may configure.
package logging

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"
)

// Formats are the values of --log-format.
var Formats = []string{"text", "json"}

// Flags are a daemon's logging flags.
type Flags struct {
	Level  slog.Level
	Format string
}

// Register adds --log-level and --log-format to fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	if f.Format == "" {
		f.Format = "text"
	}
	fs.TextVar(&f.Level, "log-level", f.Level, "log level: debug, info, warn or error")
	fs.StringVar(&f.Format, "log-format", f.Format, "log format: text (key=value) or json (one object a line, for log collectors)")
}

// New returns a logger writing to w at level in format ("text" or "json";
// empty means text).
func New(w io.Writer, level slog.Level, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: must be text or json", format)
}

// Logger returns the logger the flags describe, writing to w.
func (f Flags) Logger(w io.Writer) (*slog.Logger, error) { return New(w, f.Level, f.Format) }

// OrDiscard returns l, or a logger that discards everything when l is nil.
// Libraries call it on the logger they are given.
func OrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

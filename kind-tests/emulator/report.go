package emulator

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Report collects what drills and the demo measured, for one table at the
// end. It is safe for concurrent use.
type Report struct {
	mu   sync.Mutex
	rows []ReportRow
}

// ReportRow is one measured figure.
type ReportRow struct {
	Step   string
	Figure string
	Value  string
	Result string // "pass", "FAIL", "skip" or empty
}

// Add appends a row.
func (r *Report) Add(step, figure, value, result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, ReportRow{step, figure, value, result})
}

// Rows returns a copy of the rows.
func (r *Report) Rows() []ReportRow {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ReportRow(nil), r.rows...)
}

// Print writes the rows as an aligned table.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tWHAT\tMEASURED\tRESULT")
	fmt.Fprintln(tw, "----\t----\t--------\t------")
	for _, row := range r.Rows() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row.Step, row.Figure, row.Value, row.Result)
	}
	tw.Flush()
}

// String returns the table.
func (r *Report) String() string {
	var b strings.Builder
	r.Print(&b)
	return b.String()
}

// Ms formats a duration in milliseconds, the unit failovers are read in.
func Ms(d time.Duration) string {
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

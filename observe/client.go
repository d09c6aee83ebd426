package observe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Request is one GET /flows: which flows, how many of the ring's, and
// whether to keep streaming new ones.
type Request struct {
	Filter Filter
	// Last keeps only the last N flows of the ring's replay (0: all).
	Last int
	// Follow streams every new matching flow after the replay.
	Follow bool
}

// Query renders the request as GET /flows parameters.
func (r Request) Query() url.Values {
	q := r.Filter.Query()
	if r.Last > 0 {
		q.Set("last", strconv.Itoa(r.Last))
	}
	if r.Follow {
		q.Set("follow", "true")
	}
	return q
}

// MaxLine bounds one flow's JSON line: an agent (possibly of another
// cluster) that sends a longer one is cut off, not buffered.
const MaxLine = 64 << 10

// ErrStatus wraps a refusal by the agent (an HTTP status other than 200).
var ErrStatus = errors.New("agent refused the request")

// Stream asks the agent at base (http://host:port or https://host:port)
// for its flows and calls fn with each, in the agent's order, until the
// replay ends (or, with Follow, until ctx ends), fn fails, or the stream
// breaks. A flow line longer than MaxLine ends the stream with an error.
func Stream(ctx context.Context, hc *http.Client, base string, r Request, fn func(Flow) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/flows?"+r.Query().Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%w: %s: %s", ErrStatus, resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	for sc.Scan() {
		var f Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return fmt.Errorf("flow line: %w", err)
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("flows: %w", err)
	}
	return nil
}

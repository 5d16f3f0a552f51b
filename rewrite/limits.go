package rewrite

import (
	"strconv"
	"sync"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Planning a statement costs memory in proportion to its text: the
// libpg_query parse tree, decoded from protobuf into Go, takes about 18
// bytes per byte of SQL for a multi-row INSERT, the whole plan about 40
// (measured: a 10.9 MB INSERT into a PHI relation peaked at 412 MB of Go
// heap), and the audit text's normalization another 20 once the plan's
// tree is garbage. Two bounds keep that from exhausting the proxy:
//
//   - a statement that names a PHI relation is planned only up to
//     maxPHIText bytes (DefaultMaxPHIText); a longer one is refused with
//     54000 before it is parsed;
//   - texts too long to cache (over the Cache's maxText) that must be
//     parsed are planned against a byte budget shared by every session
//     of the Cache (DefaultLargePlanBytes): a session waits while other
//     sessions' long statements are being planned, so the instance's
//     planning peak is about 40 × that budget, whatever the number of
//     sessions. Pass-through texts, which are only scanned, do not wait.

const (
	// DefaultMaxPHIText is the longest statement text (bytes) naming a
	// PHI relation that the planner plans.
	DefaultMaxPHIText = 4 << 20
	// DefaultLargePlanBytes bounds the text bytes of long statements
	// planned at once by the sessions sharing a Cache.
	DefaultLargePlanBytes = 4 << 20
)

// WithMaxPHIText sets the longest statement text naming a PHI relation
// that is planned (n <= 0: DefaultMaxPHIText).
func WithMaxPHIText(n int) PlannerOption {
	return func(p *Planner) {
		if n > 0 {
			p.maxPHIText = n
		}
	}
}

// tooLong is the refusal of a PHI statement over maxPHIText.
func (p *Planner) tooLong(sql string) error {
	return pgerr.New(pgerr.ProgramLimitExceeded, "statement of "+strconv.Itoa(len(sql))+" bytes that mentions PHI relation "+p.mentionedRelation(sql)+
		" exceeds phiproxy's planning limit of "+strconv.Itoa(p.maxPHIText)+" bytes").
		WithHint("send the rows in smaller statements, bind the values as parameters ($n), or load them with COPY FROM STDIN, which streams")
}

// byteBudget is a counting semaphore over bytes.
type byteBudget struct {
	mu   sync.Mutex
	cond sync.Cond
	max  int
	used int
	peak int // the most bytes held at once (tests)
}

func newByteBudget(max int) *byteBudget {
	b := &byteBudget{max: max}
	b.cond.L = &b.mu
	return b
}

// acquire waits until n bytes (at most the whole budget) are free, takes
// them and returns how many it took (for release).
func (b *byteBudget) acquire(n int) int {
	if n > b.max {
		n = b.max
	}
	b.mu.Lock()
	for b.used+n > b.max {
		b.cond.Wait()
	}
	b.used += n
	b.peak = max(b.peak, b.used)
	b.mu.Unlock()
	return n
}

func (b *byteBudget) release(n int) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

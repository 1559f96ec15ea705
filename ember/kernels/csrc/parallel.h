// Work shared over Ember's own worker threads, in pieces that threads take as they become free.
//
// With OpenMP (at::parallel_for) every thread of a parallel region must reach its closing
// barrier, so when the OS takes a core away (another process, the server's HTTP thread) each
// of the hundreds of regions in a token waits for the descheduled thread's next time slice: on
// this 2-core machine one busy process cut 2-thread decode to a fourteenth. Here the calling
// thread takes pieces itself and waits only for pieces another thread has started; a worker
// that was not running when the work arrived finds nothing left and goes back to waiting.
// Which thread computes a piece never changes what it computes: results do not depend on the
// split or on the number of threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

namespace ember {

// Threads that share work: torch's intra-op thread count (torch.set_num_threads), read at every
// call so a change applies at once.
int64_t pool_threads();

// Runs body(begin, end) over pieces covering [0, n) on the calling thread and the pool's
// workers; returns when all are done. Piece bounds are multiples of `unit` (but for the end),
// at least `min_piece` items; threads take a share of what is left, big pieces first. Nested
// calls (from inside a piece) run serially on the calling thread.
void run_shared(int64_t n, int64_t unit, int64_t min_piece,
                const std::function<void(int64_t, int64_t)>& body);

// body(begin, end) over [0, n), split only where each piece gets at least `grain` items.
template <typename F>
void parallel_grain(int64_t n, int64_t grain, const F& body) {
  run_shared(n, 1, grain, body);
}

// body(begin, end) over [0, n) in whole units of `unit` items (e.g. the rows sharing one
// dequantized weight tile), at least `min_units` units per piece.
template <typename F>
void parallel_units(int64_t n, int64_t unit, int64_t min_units, const F& body) {
  run_shared(n, unit, unit * min_units, body);
}

}  // namespace ember

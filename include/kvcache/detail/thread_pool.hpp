// The library's one threading policy: how many threads a piece of work gets, and the small pool that runs it.
//
// Why not OpenMP: a parallel region ends in a barrier that waits for every thread of the team, including one
// the OS has not scheduled yet. On a machine whose other cores are busy that barrier turns 100 tok/s into 2.
// Here the caller works too and never waits on a helper that has not started:
//   - the chunks are split into one contiguous range per thread (the caller's first); each thread runs its own
//     range front to back — one stretch of memory the prefetcher can follow — then steals chunks one at a time
//     from the back of the others' ranges, so a helper that starts late (or never) has its range done for it;
//   - the caller runs chunks until none are left unclaimed, closes the job (a helper arriving later finds
//     nothing to do), then waits only for chunks that running helpers have already claimed;
//   - an idle helper polls for the next job for a short while (yielding the core at each look) before it
//     sleeps: a decoder step opens a job every 10-100 us, about what waking a sleeping thread costs.
// Whether a call is offered to the helpers at all is measured (detail/helper_governor.hpp): a calling thread
// whose helpers have been slower than its working alone — their cores busy with other programs — runs alone
// until the next probe shows otherwise.
// One pool for the process, sized to the hardware (the caller + hardware_concurrency - 1 helpers), so many
// callers share the helpers instead of multiplying threads; a parallel_for inside a task runs inline.
//
// Determinism: a task's output must not depend on which thread runs it (each task writes its own outputs, in
// one fixed order). The kernels' bitwise guarantees then hold for any thread count and any timing.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace kvcache::detail {

/// Below this many bytes read, a call runs on the caller alone: waking a helper costs more than it saves.
inline constexpr std::size_t kMinParallelBytes = std::size_t(64) << 10;

/// Threads a call with `threads = 0` gets: the environment variable KVCACHE_THREADS if it holds a positive
/// number, else the hardware's threads (at least 1). Read once.
int default_threads();

/// The threads the hardware offers (std::thread::hardware_concurrency, at least 1): the pool's helpers + 1.
int hardware_threads();

/// The one place that decides how many threads a piece of work gets.
///   requested: the caller's thread count (0 or less: default_threads()); never more than hardware_threads();
///   tasks:     independent units of the work — no more threads than tasks;
///   bytes:     memory the work reads — one thread when below kMinParallelBytes.
/// The result is at least 1. It only decides speed: kernels give the same bits for any count.
int thread_count(int requested, std::size_t tasks, std::size_t bytes);

/// Whether a parallel_for call may run on the caller alone when that has measured faster.
enum class HelperUse {
    measured,  ///< offered to the helpers unless the calling thread's HelperGovernor found working alone faster
    always,    ///< always offered to the helpers (a bandwidth probe that must run on N threads; tests)
};

/// What a parallel_for call tells the pool beyond its tasks.
struct ParallelOptions {
    /// How much work the call does, in any unit that grows with it (a matmul: weight bytes x tokens). Calls of one
    /// body with the same task count are timed apart when their sizes differ by a quarter or more: a decode
    /// step's matmuls of different shapes, a prompt's chunk and a one-token step. 0: not given.
    std::size_t size = 0;
    HelperUse helpers = HelperUse::measured;
};

/// The type-erased body of a parallel_for: runs tasks [begin, end).
using ParallelBody = void (*)(void* context, std::size_t begin, std::size_t end);

/// parallel_for's non-template part (src/core/thread_pool.cpp).
void run_parallel(std::size_t tasks, std::size_t chunk, int threads, const ParallelOptions& options,
                  ParallelBody body, void* context);

/// True on a pool helper and on a caller while it runs tasks of a parallel_for: a nested call runs inline.
bool inside_parallel_for() noexcept;

/// Runs body(begin, end) over the tasks [0, tasks), `chunk` tasks per claim, on up to `threads` threads (the
/// caller and up to threads - 1 pool helpers; pass a count from thread_count()). Returns when every task has
/// run. The first exception a task throws is rethrown here (the original object, e.g. a kvcache::Error);
/// tasks not yet claimed by then are skipped. With threads > 1 the call may still run on the caller alone, where
/// that has measured faster (options.helpers).
template <class Body>
void parallel_for(std::size_t tasks, std::size_t chunk, int threads, const ParallelOptions& options, Body&& body) {
    if (tasks == 0) return;
    if (chunk == 0) chunk = 1;
    if (threads <= 1 || tasks <= chunk) {
        body(std::size_t{0}, tasks);
        return;
    }
    using B = std::remove_reference_t<Body>;
    run_parallel(
        tasks, chunk, threads, options,
        [](void* context, std::size_t begin, std::size_t end) { (*static_cast<B*>(context))(begin, end); },
        const_cast<void*>(static_cast<const void*>(&body)));
}

/// parallel_for with default options (no size given; helpers used where measured faster).
template <class Body>
void parallel_for(std::size_t tasks, std::size_t chunk, int threads, Body&& body) {
    parallel_for(tasks, chunk, threads, ParallelOptions{}, std::forward<Body>(body));
}

}  // namespace kvcache::detail
